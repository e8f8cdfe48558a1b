"""The Dask runner: Beam 2.77.0's ``DaskRunner``, with four gaps closed.

Beam's DaskRunner (``apache_beam.runners.dask``, the newest on PyPI with Beam 2.77.0)
translates each leaf transform into a ``dask.bag`` operation. Run against the FnApiRunner on
20-line pipelines (``tests/test_dask_runner.py``), it gets four things wrong, and the build
hits all four:

1. **Tagged outputs.** A transform's bag is stored per transform, not per output, so every
   element of a ``ParDo(...).with_outputs(...)`` reaches every output: items flow into the
   errors branch. Here each output PCollection gets its own bag, filtered by tag.
2. **Output of finish_bundle.** A bundle's results are collected before ``finish_bundle``
   runs, so what it emits is lost: ``BatchElements`` emits a bundle's last, partial batch
   there, and RunInference lost 6 of 300 items. Here the results are collected after it,
   into receivers made for each bundle (Beam's are made once, when the graph is built).
3. **Several sinks.** Only the last transform's bag is computed; a pipeline with two sinks
   leaves the other one unrun. Here every output that no transform reads is computed, in
   one graph, so what they share runs once (``dask.optimize``, which Beam's runner calls
   first, would inline a shared task into each reader: a ParDo with two outputs, and all
   before it, ran twice).
4. **Side inputs.** A side input is read by computing its producer's bag inside the
   consuming task, once for every side input and bundle that reads it. Here it is one
   node of the graph, computed once and handed to every bundle; and that node is made
   without optimizing its graph (``to_delayed(optimize_graph=False)``): optimized, it held
   renamed copies of everything upstream, so a side input derived from a PCollection that
   is also read as a main input computed that PCollection again (the build embedded
   every image four times: for the Caption stage, the caption model, the projection and
   its sample).

And one change for speed: Beam's GroupByKey keeps its input's partitions, and the build's
catalog arrives as one partition (a ``Create`` of one catalog path, then a ``FlatMap`` of its
rows), so one worker would do everything. Here a GroupByKey spreads its groups over at least
as many partitions as the cluster has worker threads (``--dask_npartitions`` to choose).

Nothing outside this module knows about Dask: the build names ``--runner DaskRunner`` and
``pipelines.build_index`` picks this class for that name.
"""

from __future__ import annotations

import dataclasses
import re

import dask.bag as db
from apache_beam import DoFn, TaggedOutput, pvalue
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, _OutputHandler
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask import overrides as beam_overrides
from apache_beam.runners.dask import transform_evaluator as beam_ops
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.sideinputs import SideInputMap

BEAM_VERSION = "2.77.0"  # the DaskRunner this module adapts
MAIN_TAGS = (None, "None")  # how an AppliedPTransform names its main output


def _bundle(items, fn, label, window_fn, args, kwargs, tagged, side_specs, *side_values):
    """One Dask partition as one Beam bundle: setup, start, process, finish, teardown,
    with its own receivers; -> everything the bundle emitted, finish_bundle's included:
    the elements, or with ``tagged`` (tag, element) pairs, None for the main output."""
    receivers = beam_ops.OneReceiver()
    side_inputs = [SideInputMap(view_class, view_options, [
        beam_ops.get_windowed_value(value, mapping_fn) for value in values])
        for (view_class, view_options, mapping_fn), values in zip(side_specs, side_values)]
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(fn),
        _OutputHandler(window_fn=window_fn, main_receivers=receivers[None],
                       tagged_receivers=receivers, per_element_output_counter=None,
                       output_batch_converter=None, process_yields_batches=False,
                       process_batch_yields_elements=False),
        context=DoFnContext(label, state=None), side_inputs=side_inputs,
        input_args=list(args), input_kwargs=kwargs, user_state_context=None,
        bundle_finalizer_param=DoFn.BundleFinalizerParam())
    invoker.invoke_setup()
    try:
        invoker.invoke_start_bundle()
        for item in items:
            invoker.invoke_process(item)
        invoker.invoke_finish_bundle()
    finally:
        invoker.invoke_teardown()
    if not tagged:  # one output: what was emitted to an undeclared tag goes nowhere
        return [value.value for value in receivers.values
                if not isinstance(value, TaggedOutput)]
    return [(value.tag, value.value.value) if isinstance(value, TaggedOutput) else
            (None, value.value) for value in receivers.values]


def task_name(label: str) -> str:
    """A Beam step's full label as the prefix of its Dask tasks' keys (the dashboard and
    the task stream group tasks by it): ``Embed/CheckEmbedding`` -> ``Embed.CheckEmbedding``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "_", label.replace("/", "."))


def _concatenated(parts):
    return [value for part in parts for value in part]


def _as_whole(bag: db.Bag):
    """A bag as one delayed list: one node of the graph that every reader shares. (A bag
    ``Item`` handed to ``map_partitions`` is computed again for each reader; a ``Delayed``
    is computed once.)"""
    return bag.reduction(list, _concatenated).to_delayed(optimize_graph=False)


class _ParDo(beam_ops.DaskBagOp):
    """Beam's ParDo op, with bundles that keep finish_bundle's output, side inputs
    computed once (gaps 2 and 4), and each output's elements tagged when there are several
    (gap 1)."""

    def apply(self, input_bag, side_inputs=None):
        tagged = len(self.applied.outputs) > 1
        transform = self.transform
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(self.applied.main_inputs.values()))
        window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
        specs, wholes = [], []
        for side_input, whole in side_inputs or []:
            specs.append((type(side_input), side_input._view_options(),
                          side_input._window_mapping_fn))
            wholes.append(whole)
        return input_bag.map(beam_ops.get_windowed_value, window_fn).map_partitions(
            _bundle, transform.fn, transform.label, window_fn, list(args), kwargs, tagged,
            specs, *wholes, token=task_name(self.applied.full_label))


def _key(pair):
    return pair[0]


def _grouped(group):
    key, pairs = group
    return key, [beam_ops.defenestrate(pair[1]) for pair in pairs]


class _GroupByKey(beam_ops.DaskBagOp):
    """Beam's GroupByKey op, over at least ``parallelism`` partitions."""

    def apply(self, input_bag, side_inputs=None):
        # With a distributed client, groupby's task shuffle keeps its input's partition
        # count and ignores npartitions: split the input first.
        partitions = max(input_bag.npartitions, self.bag_kwargs.get("parallelism", 1))
        return input_bag.repartition(npartitions=partitions).groupby(
            _key, shuffle="tasks").map(_grouped)


def _output(tag):
    """(tag, element) pairs -> the elements of one output."""
    return lambda pairs: [element for pair_tag, element in pairs if pair_tag == tag]


@dataclasses.dataclass
class _BagPerOutput(PipelineVisitor):
    """Each PCollection's bag (gap 1), and which PCollections some transform reads."""

    bag_kwargs: dict
    bags: dict = dataclasses.field(default_factory=dict)
    read: set = dataclasses.field(default_factory=set)
    wholes: dict = dataclasses.field(default_factory=dict)

    def visit_transform(self, node: AppliedPTransform) -> None:
        op_class = {**beam_ops.TRANSLATIONS, **OPS}.get(node.transform.__class__, beam_ops.NoOp)
        op = op_class(node, bag_kwargs=self.bag_kwargs)
        inputs = [None if isinstance(value, pvalue.PBegin) else self.bags[value]
                  for value in node.inputs]
        self.read.update(value for value in node.inputs if not isinstance(value, pvalue.PBegin))
        kwargs = {"input_bag": None, "side_inputs": None}
        if inputs:
            kwargs["input_bag"] = inputs if isinstance(op, beam_ops.Flatten) or len(inputs) > 1 \
                else inputs[0]
        if node.side_inputs:
            self.read.update(side.pvalue for side in node.side_inputs)
            kwargs["side_inputs"] = [(side, self.whole(side.pvalue)) for side in node.side_inputs]
        bag = op.apply(**kwargs)
        outputs = dict(node.outputs)
        if len(outputs) == 1:
            (output,) = outputs.values()
            self.bags[output] = bag
            return
        for tag, output in outputs.items():
            self.bags[output] = bag.map_partitions(_output(None if tag in MAIN_TAGS else tag))

    def whole(self, pcollection):
        """A side input's values, computed once however many transforms read them."""
        if pcollection not in self.wholes:
            self.wholes[pcollection] = _as_whole(self.bags[pcollection])
        return self.wholes[pcollection]

    def sinks(self) -> list:
        """The bags no transform reads: computing them computes the whole pipeline."""
        return [bag for output, bag in self.bags.items() if output not in self.read]


# Beam's ops, replaced where a gap is.
OPS = {beam_ops.apache_beam.ParDo: _ParDo, beam_overrides._GroupByKeyOnly: _GroupByKey}


class _Result(beam_dask.DaskRunnerResult):
    """Beam's result, which also lets go of the client once the job is over."""

    def wait_until_finish(self, duration=None):
        if duration is not None:
            raise NotImplementedError("waiting a while: Beam's DaskRunner would fail the job "
                                      "when the time is up")
        try:
            return super().wait_until_finish()
        finally:
            if self._state in (PipelineState.DONE, PipelineState.FAILED):
                self.client.close()

    def cancel(self):
        try:
            return super().cancel()
        finally:
            self.client.close()


class DaskRunner(beam_dask.DaskRunner):
    """Beam's DaskRunner with the four gaps of its module docstring closed."""

    def run_pipeline(self, pipeline, options):
        import dask.distributed as ddist

        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(
            drop_default=True, current_only=True)
        bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        try:
            bag_kwargs["parallelism"] = bag_kwargs.get("npartitions") or \
                max(1, sum(client.nthreads().values()))
            pipeline.replace_all(beam_dask.dask_overrides())
            visitor = _BagPerOutput(bag_kwargs)
            pipeline.visit(visitor)
            # One count per sink: the sinks run, and nothing but a number comes back.
            # Handed to the client together, as they are: dask.optimize() beforehand
            # (Beam's runner calls it) inlines a task that several readers share into each
            # of them, so that a multi-output ParDo and all before it ran once per output.
            futures = client.compute([sink.count() for sink in visitor.sinks()])
        except BaseException:
            client.close()
            raise
        return _Result(client, futures)

