"""Target device -> weight-compression settings, and the checks that refuse what a device cannot run."""

from __future__ import annotations

from dataclasses import dataclass, replace

from glm4_edge.errors import BadParameterError

WEIGHT_FORMATS = ("int4", "int8", "fp16")
DEVICES = ("cpu", "gpu", "npu")
BACKUP_PRECISIONS = ("int8_asym", "int8_sym", "none")
# The 4-bit number format (NNCF's CompressWeightsMode): integers with `sym`, NF4 (QLoRA's 16 normal-float
# levels times a per-group scale) or CB4 (16 fixed fp8 E4M3 levels times a per-group scale). NF4 and CB4
# have no zero point, so `sym` does not apply to them; docs/benchmarks.md "Quality" measures both.
INT4_MODES = ("int", "nf4", "cb4")
# NNCF's SensitivityMetric values: how the `ratio` split picks the layers that stay in the backup precision.
# Only weight_quantization_error is data-free; the others run the model on the calibration set.
SENSITIVITY_METRICS = ("weight_quantization_error", "hessian_input_activation", "mean_activation_variance",
                       "max_activation_variance", "mean_activation_magnitude")
NPU_CHANNELWISE_ABOVE_PARAMS = 5_000_000_000
DEFAULT_GROUP_SIZE = 128
# NNCF's GroupSizeFallbackMode.ADJUST: a layer the group size does not divide gets the largest power of
# two dividing its input channels, if at least this (AdvancedCompressionParameters.min_adjusted_group_size).
MIN_ADJUSTED_GROUP_SIZE = 32


@dataclass(frozen=True)
class CompressionSettings:
    weight_format: str = "int4"
    sym: bool = False
    group_size: int = DEFAULT_GROUP_SIZE  # -1: one scale per output channel
    ratio: float = 1.0  # share of weights in 4 bits; the rest use backup_precision
    all_layers: bool = True  # embeddings and lm_head in 4 bits too
    backup_precision: str = "int8_asym"
    awq: bool = False
    scale_estimation: bool = False
    dataset: str | None = None  # "builtin" or a .txt/.jsonl path; needed by the data-aware methods
    int4_mode: str = "int"  # INT4_MODES
    gptq: bool = False
    sensitivity_metric: str | None = None  # SENSITIVITY_METRICS; None: NNCF's choice (see compress_ir)

    @property
    def data_aware(self) -> bool:
        """Whether compression runs the model on calibration data (AWQ, scale estimation, GPTQ, or a
        data-based sensitivity metric for the ratio split)."""
        metric_needs_data = self.sensitivity_metric not in (None, "weight_quantization_error")
        return self.awq or self.scale_estimation or self.gptq or metric_needs_data


# Why these (docs/benchmarks.md, "Quality"): quality first. On GLM-4-9B's layer shapes, with Gaussian
# and with heavy-tailed weights with outlier input channels, asymmetric INT4 in groups of 32 with 20%
# of the weights in INT8 (NNCF's ratio 0.8, the INT8 layers picked by their INT4 error) was the only
# data-free INT4 layout measured at or below llama.cpp Q4_K_M's error in both weight relative MSE and
# output error; asym g32 alone sits between Q4_K_M and Q4_0, symmetric group 128 and channel-wise
# are coarser than Q4_0 (channel-wise 14.6x Q4_0's weight error on heavy-tailed weights). The GPU
# gets the same layout (its speed there is unmeasured). The NPU runs symmetric INT4 only: group 128,
# channel-wise above 5B parameters.
_CHANNELWISE = CompressionSettings(weight_format="int4", sym=True, group_size=-1, ratio=1.0, all_layers=True,
                                   backup_precision="int8_sym")
_QUALITY = CompressionSettings(weight_format="int4", sym=False, group_size=32, ratio=0.8, all_layers=True,
                               backup_precision="int8_asym")
PRESETS = {
    "cpu": _QUALITY,
    "gpu": _QUALITY,
    "npu": CompressionSettings(weight_format="int4", sym=True, group_size=128, ratio=1.0, all_layers=True,
                               backup_precision="int8_sym"),
    # Speed first (`--fast`): symmetric channel-wise INT4 on every layer, the fastest layout measured
    # (1.28x llama.cpp Q4_0 side by side) but coarser than Q4_0.
    "cpu-fast": _CHANNELWISE,
    "gpu-fast": _CHANNELWISE,
}


def resolve(device: str, weight_format: str | None = None, *, group_size: int | None = None,
            ratio: float | None = None, sym: bool | None = None, all_layers: bool | None = None,
            awq: bool = False, scale_estimation: bool = False, dataset: str | None = None,
            backup_precision: str | None = None, num_parameters: int = 0, fast: bool = False,
            int4_mode: str | None = None, gptq: bool = False,
            sensitivity_metric: str | None = None) -> CompressionSettings:
    """The preset for `device` (its speed-first variant with `fast`), overridden by what the user asked,
    or a BadParameterError saying why not."""
    if device not in DEVICES:
        raise BadParameterError(f"--device {device!r} is not one of {', '.join(DEVICES)}", "device")
    if fast and device == "npu":
        raise BadParameterError("--fast has no NPU preset (the NPU already goes channel-wise above 5B "
                                "parameters); drop --fast for --device npu", "fast")
    weight_format = weight_format or "int4"
    if weight_format not in WEIGHT_FORMATS:
        raise BadParameterError(f"--weight-format {weight_format!r} is not one of {', '.join(WEIGHT_FORMATS)}",
                                "weight_format")
    if fast and weight_format != "int4":
        raise BadParameterError(f"--fast is an INT4 preset; drop it for --weight-format {weight_format}", "fast")
    settings = PRESETS[preset_name(device, fast)]
    if device == "npu" and num_parameters > NPU_CHANNELWISE_ABOVE_PARAMS:
        settings = replace(settings, group_size=-1)
    if weight_format == "int8":
        settings = replace(settings, weight_format="int8", group_size=-1, ratio=1.0, all_layers=True,
                           sym=device != "cpu", awq=False, scale_estimation=False, dataset=None, gptq=False)
    elif weight_format == "fp16":
        settings = replace(settings, weight_format="fp16", awq=False, scale_estimation=False, dataset=None,
                           gptq=False)
    overrides = {"group_size": group_size, "ratio": ratio, "sym": sym, "all_layers": all_layers,
                 "backup_precision": backup_precision, "int4_mode": int4_mode,
                 "sensitivity_metric": sensitivity_metric}
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None},
                       awq=awq or settings.awq, scale_estimation=scale_estimation or settings.scale_estimation,
                       gptq=gptq or settings.gptq, dataset=dataset or settings.dataset)
    if settings.data_aware and not settings.dataset:
        settings = replace(settings, dataset="builtin")
    _validate(device, settings, explicit=overrides)
    return settings


def preset_name(device: str, fast: bool = False) -> str:
    """The PRESETS key: the device, or `<device>-fast` for the speed-first preset."""
    return f"{device}-fast" if fast else device


def _validate(device: str, settings: CompressionSettings, explicit: dict) -> None:
    given = {k for k, v in explicit.items() if v is not None}
    if settings.weight_format == "fp16":
        knobs = sorted(given | {k for k in ("awq", "scale_estimation", "gptq") if getattr(settings, k)})
        if knobs:
            raise BadParameterError(f"--{knobs[0].replace('_', '-')} only applies to int4/int8 weights; drop it "
                                    "or use --weight-format int4", knobs[0])
        if device == "npu":
            raise BadParameterError("the NPU runs INT4 symmetric weights; use --device npu with --weight-format "
                                    "int4", "weight_format")
        return
    if settings.group_size != -1 and settings.group_size <= 0:
        raise BadParameterError(f"--group-size {settings.group_size} must be a positive number or -1 "
                                "(channel-wise)", "group_size")
    if not 0.0 < settings.ratio <= 1.0:
        raise BadParameterError(f"--ratio {settings.ratio} must be in (0, 1]", "ratio")
    if settings.backup_precision not in BACKUP_PRECISIONS:
        raise BadParameterError(f"--backup-precision {settings.backup_precision!r} is not one of "
                                f"{', '.join(BACKUP_PRECISIONS)}", "backup_precision")
    if settings.int4_mode not in INT4_MODES:
        raise BadParameterError(f"int4 mode {settings.int4_mode!r} is not one of {', '.join(INT4_MODES)}",
                                "int4_mode")
    if settings.sensitivity_metric is not None and settings.sensitivity_metric not in SENSITIVITY_METRICS:
        raise BadParameterError(f"sensitivity metric {settings.sensitivity_metric!r} is not one of "
                                f"{', '.join(SENSITIVITY_METRICS)}", "sensitivity_metric")
    if settings.weight_format == "int8":
        for knob in ("group_size", "ratio", "all_layers", "backup_precision", "int4_mode", "sensitivity_metric"):
            if knob in given:
                raise BadParameterError(f"--{knob.replace('_', '-')} only applies to int4 weights", knob)
        if settings.data_aware:
            raise BadParameterError("--awq, --scale-estimation and GPTQ only apply to int4 weights", "awq")
    if device == "npu":
        if settings.int4_mode != "int":
            raise BadParameterError(f"the NPU runs integer INT4 weights, not {settings.int4_mode}", "int4_mode")
        if not settings.sym:
            raise BadParameterError("the NPU runs symmetric weights only; drop --no-sym for --device npu", "sym")
        if settings.weight_format == "int4" and settings.ratio < 1.0 and settings.backup_precision == "int8_asym":
            raise BadParameterError("the NPU cannot run int8_asym backup layers; use --backup-precision int8_sym",
                                    "backup_precision")
        if settings.weight_format == "int4" and settings.group_size not in (-1, 128):
            raise BadParameterError(f"the NPU supports INT4 group size 128 or channel-wise (-1), not "
                                    f"{settings.group_size}", "group_size")


def adapt_group_size(settings: CompressionSettings, device: str,
                     channels: dict[str, int]) -> tuple[CompressionSettings, list[str], bool]:
    """(settings, notes, adjust): what to do when the INT4 group size does not divide some layers' input
    channels (`channels`: a name for each kind of matrix -> its input channels), where NNCF would stop.

    The NPU runs group 128 or channel-wise only, so it goes channel-wise throughout. Elsewhere `adjust`
    asks NNCF's GroupSizeFallbackMode.ADJUST for those layers, which uses the largest power of two that
    divides the channels (>= MIN_ADJUSTED_GROUP_SIZE) or else the backup precision. `notes` say which, in
    words for the conversion summary."""
    group = settings.group_size
    if settings.weight_format != "int4" or group <= 0:
        return settings, [], False
    uneven = {name: size for name, size in channels.items() if size and size % group}
    if not uneven:
        return settings, [], False
    what = ", ".join(f"{name} {size}" for name, size in uneven.items())
    if device == "npu":
        note = (f"group size {group} does not divide the input channels ({what}) and the NPU runs group size 128 "
                "or channel-wise only: all layers are channel-wise INT4")
        return replace(settings, group_size=-1), [note], False
    notes = []
    for name, size in uneven.items():
        adjusted = size & -size  # the largest power of two dividing size, as NNCF computes it
        if adjusted >= MIN_ADJUSTED_GROUP_SIZE:
            notes.append(f"group size {group} does not divide the {name} ({size}): those layers use group size "
                         f"{adjusted}")
        else:
            backup = "their original precision" if settings.backup_precision == "none" else settings.backup_precision
            notes.append(f"group size {group} does not divide the {name} ({size}) and no group size of at least "
                         f"{MIN_ADJUSTED_GROUP_SIZE} does: those layers use {backup}")
    return settings, notes, True


def describe(settings: CompressionSettings) -> str:
    if settings.weight_format == "fp16":
        return "fp16"
    if settings.weight_format == "int8":
        return f"int8 {'sym' if settings.sym else 'asym'} channel-wise"
    group = "channel-wise" if settings.group_size == -1 else f"group {settings.group_size}"
    extra = [s for s, on in (("awq", settings.awq), ("scale-estimation", settings.scale_estimation),
                             ("gptq", settings.gptq)) if on]
    if settings.sensitivity_metric:
        extra.append(f"layers by {settings.sensitivity_metric}")
    layers = "all layers" if settings.all_layers else "embeddings/lm_head in backup"
    kind = settings.int4_mode if settings.int4_mode != "int" else ("sym" if settings.sym else "asym")
    return (f"int4 {kind} {group}, ratio {settings.ratio:g}, {layers}"
            + (f", {', '.join(extra)}" if extra else ""))
