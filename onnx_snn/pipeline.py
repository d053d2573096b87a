"""The conversion pipeline, top to bottom in convert_with_report: load and validate -> normalise
(composite ops into the standard ops they compute) -> find the rules' sites -> calibrate their ranges
on the original -> build the spiking ops -> attach the ops' functions -> check (onnx.checker, then
both models on the same inputs) -> report. Saving is model_io.save (the CLI's last step)."""

from __future__ import annotations

import os

import numpy as np
import onnx

from onnx_snn import calibrate as cal
from onnx_snn import model_io, ops
from onnx_snn.graph import Graph, every_node
from onnx_snn.neurons import IDENTITY_CODES, NeuronChoice, check_presets, reencode_wide_fan_outs
from onnx_snn.precision import element_types
from onnx_snn.report import Report, count_macs, count_sites, left_nonlinear, mac_tensors, spike_driven_macs
from onnx_snn.rewrite import build_sites, expand_fused, find_sites
from onnx_snn.rules import FUSED_RULES, attention, rule_set
from onnx_snn.runtime import newest_opset


class ConversionError(ValueError):
    """The model cannot be converted; the message says why (and names the file)."""


def convert(model: str | os.PathLike | onnx.ModelProto, *, timesteps: int = 16, calibration: cal.CalibrationData = None,
            **options) -> onnx.ModelProto:
    """The spiking version of `model` (a path or a ModelProto, never modified).

    calibration: a dict of input arrays, a list of them (batches), any iterable of them (streamed:
    one batch is held at a time), a path to an .npz file, or None (inputs synthesised from the
    model's input signature). Options: hybrid (bool: convert only the nonlinear ops), rules (names:
    only these rules), bases (dict: bases per neuron function), identity_code ("digits": signed-digit
    identity encoders, or "binary": the identity presets; onnx_snn.neurons), op_timesteps (dict: T per
    neuron function, or "encoder" for the encoders of linear layers and products), reencode (bool:
    re-encode a many-basis activation that feeds wide linear layers with a one-basis encoder where
    that costs fewer accumulations), portable (None, or "arithmetic" or "select" (True: "arithmetic"):
    every spiking op written out in standard ONNX ops with its neuron steps in that style, for
    runtimes without the custom-op library; onnx_snn.ops.portable), fix_dims (dict: symbolic input
    dims given fixed sizes, e.g. {"batch": 8}, after the check; for compilers that want static
    shapes), progress (bool), check (bool: run
    the spiking model on the first calibration batch and compare it with the original's outputs),
    strict (bool: raise ConversionError if the result is not fully spiking: a nonlinear op left on
    activations or, unless hybrid, MACs not spike-driven; Report.shortfall says which)."""
    return convert_with_report(model, timesteps=timesteps, calibration=calibration, **options)[0]


def check_options(timesteps: int, *, bases: dict[str, int] | None = None, op_timesteps: dict[str, int] | None = None,
                  identity_code: str = "digits", hybrid: bool = False, rules: list[str] | None = None,
                  portable: bool | str | None = None) -> list:
    """Raise ValueError (one line) for a conversion option no shipped neuron or rule serves; else the
    rules they choose."""
    if portable not in (None, False, True, *ops.PORTABLE_STEPS):
        raise ValueError(f"portable {portable!r} is not one of {', '.join(ops.PORTABLE_STEPS)}")
    if identity_code not in IDENTITY_CODES:
        raise ValueError(f"identity code {identity_code!r} is not one of {', '.join(IDENTITY_CODES)}")
    check_presets(timesteps, dict(bases or {}), dict(op_timesteps or {}))
    return rule_set(hybrid, rules)


def convert_with_report(
    model: str | os.PathLike | onnx.ModelProto,
    *,
    timesteps: int = 16,
    calibration: cal.CalibrationData = None,
    hybrid: bool = False,
    rules: list[str] | None = None,
    bases: dict[str, int] | None = None,
    identity_code: str = "digits",
    op_timesteps: dict[str, int] | None = None,
    reencode: bool = True,
    portable: bool | str | None = None,
    fix_dims: dict[str, int] | None = None,
    progress: bool = False,
    check: bool = True,
    strict: bool = False,
) -> tuple[onnx.ModelProto, Report]:
    """convert() with its Report: (the spiking model, what was replaced, what was left and why, the share
    of MACs spike-driven, the check). The options are convert()'s; a bad option or model raises
    ConversionError (or the model_io/calibrate error naming the file)."""
    where = os.fspath(model) if not isinstance(model, onnx.ModelProto) else "model"
    try:  # before the model is read and calibrated: a wrong T, bases or rule choice fails at once
        chosen = check_options(timesteps, bases=bases, op_timesteps=op_timesteps, identity_code=identity_code,
                               hybrid=hybrid, rules=rules, portable=portable)
    except ValueError as e:
        raise ConversionError(f"{where}: {e}") from None
    spiking, model_dir = model_io.load(model)
    validate(spiking, model_dir, where)
    unknown_dims = set(fix_dims or {}) - model_io.input_dim_params(spiking)
    if unknown_dims:
        raise ConversionError(f"{where}: no input has a dim named {', '.join(sorted(unknown_dims))} (its symbolic "
                              f"dims: {', '.join(sorted(model_io.input_dim_params(spiking))) or 'none'})")
    graph, types, expanded, fused_left = normalise(spiking)
    batches, synthesized = cal.iter_batches(spiking, calibration, model_dir=model_dir)

    sites, near_misses = find_sites(graph, chosen, types)
    neurons = NeuronChoice(timesteps, {}, dict(bases or {}), identity_code, op_timesteps=dict(op_timesteps or {}))
    # before calibration: the encoders' ranges are measured with the others
    reencoded = reencode_wide_fan_outs(graph, sites, neurons) if reencode else 0
    near_misses += fused_left
    probes = [p for site in sites for p in site.probes]
    # calibration runs the original, before the rewrite: no copy of the model is needed
    calibration_result = cal.calibrate(spiking, model_dir, probes, batches, shape_tensors=mac_tensors(graph.graph),
                                       synthesized=synthesized, progress=progress, where=where)
    macs_by_layer = count_macs(graph, calibration_result.shapes, calibration_result.body_shapes)
    neurons.ranges = calibration_result.ranges
    encoders = build_sites(graph, sites, neurons, types)
    ops.attach_functions(spiking)
    # functions need IR 8; newer than IR_VERSION is what older onnxruntime versions reject
    spiking.ir_version = max(8, min(spiking.ir_version or ops.IR_VERSION, ops.IR_VERSION))
    model_io.check(spiking, full_check=True)

    replaced, by_kind = count_sites(expanded + sites)
    total, driven, unknown = spike_driven_macs(graph, macs_by_layer)
    report = Report(
        model=where, timesteps=timesteps, hybrid=hybrid, replaced=replaced, replaced_by_kind=by_kind,
        encoders=encoders, left=left_nonlinear(graph, near_misses), macs_total=total, macs_spike_driven=driven,
        calibration={"batches": calibration_result.batches, "synthesized": synthesized,
                     "statistic": cal.STATISTIC},
        warnings=sorted(set(neurons.warnings)), macs_unknown=unknown, reencoded=reencoded,
        op_timesteps={f: neurons.steps(f) for f in neurons.bases if neurons.steps(f) != timesteps},
    )
    if strict and report.shortfall():
        raise ConversionError(f"{where}: {report.shortfall()}; the model is not fully spiking (strict)")
    if check:
        report.check = compare(calibration_result.first_outputs, spiking, model_dir, calibration_result.first_batch)
    # after the check, which runs the calibration batch's shapes; written out, the ops compute the
    # kernels' bits in onnxruntime (tests/test_portable.py)
    if fix_dims:
        spiking = model_io.fix_dims(spiking, fix_dims)
    if portable:
        spiking = ops.portable(spiking, "arithmetic" if portable is True else portable)
        model_io.check(spiking, full_check=True)
    return spiking, report


def normalise(model: onnx.ModelProto) -> tuple[Graph, dict[str, int], list, list]:
    """Composite ops as the standard ops they compute, so that the rules see their parts: ONNX
    Attention as its own function, onnxruntime's fused ops by the expansion rules (no value changes).
    (the graph index, the element types, the expansions, the fused ops left with why). Declared
    shapes that contradict a constant (onnxruntime ignores them, the full check refuses them) go."""
    model_io.drop_contradicted_shapes(model)
    attention.expand(model)
    graph = Graph(model)
    types = element_types(model)
    expanded, fused_left = expand_fused(graph, FUSED_RULES, types)
    return graph, (element_types(model) if expanded else types), expanded, fused_left


def validate(model: onnx.ModelProto, model_dir: str | None, where: str) -> None:
    """Refuse what cannot be converted, with the reason."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    oldest, newest = ops.common.MIN_OPSET, newest_opset()
    if opset is None:
        raise ConversionError(f"{where}: the model imports no standard ONNX opset; re-export it")
    if opset < oldest:
        raise ConversionError(f"{where}: opset {opset} is not supported (opsets {oldest} to {newest}); re-export the "
                              f"model at opset {oldest} or newer, or convert it: "
                              f"onnx.version_converter.convert_version(model, {oldest})")
    if opset > newest:
        raise ConversionError(f"{where}: opset {opset} is not supported (opsets {oldest} to {newest}: the newest the "
                              f"installed onnx and onnxruntime both run); {downgrade_advice(model, newest)}")
    # by its nodes: onnxruntime's optimizer imports every domain the runtime knows, used or not
    if any(n.domain == ops.DOMAIN for n in every_node(model.graph)):
        raise ConversionError(f"{where}: already a spiking model (it uses the {ops.DOMAIN} domain)")
    model_io.check_external_data(model, model_dir, where)
    try:
        model_io.check(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise ConversionError(f"{where}: not a valid ONNX model ({first})") from None


def downgrade_advice(model: onnx.ModelProto, newest: int) -> str:
    """How to bring a model of a newer opset to `newest`: onnx.version_converter works only if every
    op the graph uses has a version at or below it (it cannot write Attention at opset 22)."""
    first_version: dict[str, int] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain == "":
            first_version[schema.name] = min(schema.since_version, first_version.get(schema.name, schema.since_version))
    used = {n.op_type for n in every_node(model.graph) if n.domain in ("", "ai.onnx")}
    blocking = sorted(op for op in used if first_version.get(op, newest + 1) > newest)
    advice = f"re-export the model at opset {newest} or lower (torch: torch.onnx.export(..., opset_version={newest}))"
    if blocking:
        verb = "has" if len(blocking) == 1 else "have"
        return f"{advice}; onnx.version_converter cannot: {', '.join(blocking)} {verb} no version at opset {newest}"
    return f"{advice}, or convert it: onnx.version_converter.convert_version(model, {newest})"


def compare(expected: dict[str, np.ndarray], spiking: onnx.ModelProto, model_dir: str | None,
            feeds: dict[str, np.ndarray]) -> dict:
    """The spiking model on `feeds` against the original's outputs on them, `expected` (taken by
    calibration, so only one model is in memory at a time; onnx-simplifier's model check): per
    output, the cosine similarity and the largest and mean absolute difference."""
    from onnx_snn.evaluate import compare_outputs
    from onnx_snn.runtime import session

    names = list(expected)
    actual = session(spiking, external_data_dir=model_dir).run(names, feeds)
    return compare_outputs(names, [expected[n] for n in names], actual)
