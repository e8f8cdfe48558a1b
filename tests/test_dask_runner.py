"""runners/dask.py closes four gaps of Beam 2.77.0's DaskRunner. Each has a minimal
pipeline here: the FnApiRunner's result is the truth; Beam's own DaskRunner gets it wrong
(asserted, so that a Beam upgrade that fixes a gap shows up) and ours gets it right, on a
real scheduler with two worker processes."""

from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

pytest.importorskip("distributed")

from apache_beam.runners.dask.dask_runner import DaskRunner as BeamDaskRunner  # noqa: E402

from runners.dask import DaskRunner  # noqa: E402


def _write(folder, name):
    """A sink: each element as a line of FOLDER/NAME-<bundle>.txt, so the test reads what
    reached it, from any process."""
    class Write(beam.DoFn):
        def start_bundle(self):
            self.lines = []

        def process(self, element):
            self.lines.append(repr(element))

        def finish_bundle(self):
            if self.lines:
                path = os.path.join(folder, f"{name}-{os.getpid()}-{id(self)}-{len(self.lines)}")
                with open(path + ".tmp", "w") as stream:
                    stream.write("\n".join(self.lines) + "\n")
                os.replace(path + ".tmp", path + ".txt")
    return beam.ParDo(Write())


def _read(folder, name):
    lines = []
    for entry in sorted(os.listdir(folder)):
        if entry.startswith(name + "-") and entry.endswith(".txt"):
            lines.extend(open(os.path.join(folder, entry)).read().split())
    return sorted(lines)


class _Split(beam.DoFn):
    """Even and odd numbers to two outputs; each number it sees leaves a file behind."""

    def __init__(self, folder):
        self.folder = folder

    def process(self, number):
        with open(os.path.join(self.folder, f"split-{number}-{os.urandom(4).hex()}.txt"),
                  "w") as stream:
            stream.write(f"{number}\n")
        yield beam.pvalue.TaggedOutput("odd", number) if number % 2 else number


def tagged_outputs(pipeline, folder):
    outputs = (pipeline | beam.Create(range(10))
               | beam.ParDo(_Split(folder)).with_outputs("odd", main="even"))
    _ = outputs.even | "Even" >> _write(folder, "even")
    _ = outputs.odd | "Odd" >> _write(folder, "odd")
    return {"even": 5, "odd": 5, "split": 10}  # and each number split once


class _Batch(beam.DoFn):
    """Emits everything in finish_bundle, as BatchElements emits a bundle's last batch."""

    def start_bundle(self):
        self.held = []

    def process(self, number):
        self.held.append(number)

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        for number in self.held:
            yield WindowedValue(number, 0, [GlobalWindow()])


def finish_bundle_output(pipeline, folder):
    _ = (pipeline | beam.Create(range(300)) | beam.ParDo(_Batch())
         | "Out" >> _write(folder, "out"))
    return {"out": 300}


def two_sinks(pipeline, folder):
    numbers = pipeline | beam.Create(range(10))
    _ = numbers | "First" >> _write(folder, "first")
    _ = numbers | beam.Map(lambda n: n * 10) | "Second" >> _write(folder, "second")
    return {"first": 10, "second": 10}


def side_input(pipeline, folder):
    def producer(n):
        path = os.path.join(folder, f"produced-{os.getpid()}-{n}-{os.urandom(4).hex()}.txt")
        open(path, "w").write(f"{n}\n")
        return n

    produced = pipeline | "Ten" >> beam.Create(range(10)) | "Produce" >> beam.Map(producer)
    main = pipeline | "Main" >> beam.Create(range(4))
    _ = (main | "Sum" >> beam.Map(lambda n, all_: n + sum(all_), beam.pvalue.AsList(produced))
         | "OutSum" >> _write(folder, "sum"))
    _ = (main | "Count" >> beam.Map(lambda n, all_: sum(1 for _ in all_),
                                    beam.pvalue.AsIter(produced))
         | "OutCount" >> _write(folder, "count"))
    return {"sum": 4, "count": 4, "produced": 10}


def side_input_from_a_main_input(pipeline, folder):
    """A side input derived from a PCollection that a transform also reads as its main
    input (the build's projection and caption model, fitted on the embedded items that the
    Caption stage reads): the PCollection is computed once, not once more for the side
    input (the build embedded every image four times, one per such reader)."""
    def producer(n):
        path = os.path.join(folder, f"produced-{os.getpid()}-{n}-{os.urandom(4).hex()}.txt")
        open(path, "w").write(f"{n}\n")
        return n

    produced = pipeline | "Ten" >> beam.Create(range(10)) | "Produce" >> beam.Map(producer)
    total = produced | "Total" >> beam.CombineGlobally(sum)
    largest = produced | "Largest" >> beam.CombineGlobally(max)
    _ = (produced | "Shift" >> beam.Map(lambda n, t, m: n + t + m,
                                        beam.pvalue.AsSingleton(total),
                                        beam.pvalue.AsSingleton(largest))
         | "OutShift" >> _write(folder, "shift"))
    return {"shift": 10, "produced": 10}


GAPS = [tagged_outputs, finish_bundle_output, two_sinks, side_input,
        side_input_from_a_main_input]


def run(pipeline_fn, runner, folder, options=()):
    os.makedirs(folder, exist_ok=True)
    pipeline = beam.Pipeline(runner=runner, options=PipelineOptions(list(options)))
    expected = pipeline_fn(pipeline, folder)
    result = pipeline.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)
        if client is not None and client.status != "closed":
            client.close()  # Beam's result keeps its client connected
    return {name: _read(folder, name) for name in expected}, expected


@pytest.mark.parametrize("gap", GAPS, ids=[gap.__name__ for gap in GAPS])
def test_each_gap_gives_the_fn_api_runners_result_on_ours_and_not_on_beams(
        gap, dask_cluster, tmp_path):
    address = [f"--dask_client_address={dask_cluster.address}"]
    truth, expected = run(gap, FnApiRunner(), str(tmp_path / "fnapi"))
    assert {name: len(lines) for name, lines in truth.items()} == expected
    ours, _ = run(gap, DaskRunner(), str(tmp_path / "ours"), address)
    assert ours == truth
    beams, _ = run(gap, BeamDaskRunner(), str(tmp_path / "beam"), address)
    assert beams != truth, f"Beam's DaskRunner has no {gap.__name__} gap any more"
