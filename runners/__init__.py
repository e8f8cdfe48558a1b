"""Runner adaptations: where a Beam runner has a gap, the fix lives here, in one module per
runner, named with the Beam version it adapts. Nothing else in the project knows a runner."""
