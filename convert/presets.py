"""Target device -> weight-compression settings, and the checks that refuse what a device cannot run."""

from __future__ import annotations

from dataclasses import dataclass, replace

from glm4_edge.errors import BadParameterError

WEIGHT_FORMATS = ("int4", "int8", "fp16")
DEVICES = ("cpu", "gpu", "npu")
BACKUP_PRECISIONS = ("int8_asym", "int8_sym", "none")
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
    dataset: str | None = None  # "builtin" or a .txt/.jsonl path; needed by AWQ and scale estimation

    @property
    def data_aware(self) -> bool:
        return self.awq or self.scale_estimation


# Why these (measured, docs/benchmarks.md): on a GLM-4-9B-shaped 8-layer model on 2 CPU cores, side by
# side, symmetric channel-wise INT4 on every layer decoded at 38.4 tok/s against 27.5 for symmetric
# group-128, 29.7 for asymmetric group-128 and 28.9 for llama.cpp Q4_0. INT4 for GLM-4's 151552x4096
# embedding and lm_head matters because the head is read every token. On the embedded tiny model it
# keeps the accuracy of fp16 (README "Accuracy"). Where a large model loses accuracy channel-wise,
# `--group-size 128` or `--awq --scale-estimation` trade speed for it.
# GPU kernels favour symmetric group-128; the NPU runs symmetric INT4 only.
PRESETS = {
    "cpu": CompressionSettings(weight_format="int4", sym=True, group_size=-1, ratio=1.0, all_layers=True,
                               backup_precision="int8_sym"),
    "gpu": CompressionSettings(weight_format="int4", sym=True, group_size=128, ratio=1.0, all_layers=True,
                               backup_precision="int8_sym"),
    "npu": CompressionSettings(weight_format="int4", sym=True, group_size=128, ratio=1.0, all_layers=True,
                               backup_precision="int8_sym"),
}


def resolve(device: str, weight_format: str | None = None, *, group_size: int | None = None,
            ratio: float | None = None, sym: bool | None = None, all_layers: bool | None = None,
            awq: bool = False, scale_estimation: bool = False, dataset: str | None = None,
            backup_precision: str | None = None, num_parameters: int = 0) -> CompressionSettings:
    """The preset for `device`, overridden by what the user asked, or a BadParameterError saying why not."""
    if device not in DEVICES:
        raise BadParameterError(f"--device {device!r} is not one of {', '.join(DEVICES)}", "device")
    weight_format = weight_format or "int4"
    if weight_format not in WEIGHT_FORMATS:
        raise BadParameterError(f"--weight-format {weight_format!r} is not one of {', '.join(WEIGHT_FORMATS)}",
                                "weight_format")
    settings = PRESETS[device]
    if device == "npu" and num_parameters > NPU_CHANNELWISE_ABOVE_PARAMS:
        settings = replace(settings, group_size=-1)
    if weight_format == "int8":
        settings = replace(settings, weight_format="int8", group_size=-1, ratio=1.0, all_layers=True,
                           sym=device != "cpu")
    elif weight_format == "fp16":
        settings = replace(settings, weight_format="fp16")
    overrides = {"group_size": group_size, "ratio": ratio, "sym": sym, "all_layers": all_layers,
                 "backup_precision": backup_precision}
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None},
                       awq=awq, scale_estimation=scale_estimation, dataset=dataset)
    if settings.data_aware and not settings.dataset:
        settings = replace(settings, dataset="builtin")
    _validate(device, settings, explicit=overrides)
    return settings


def _validate(device: str, settings: CompressionSettings, explicit: dict) -> None:
    given = {k for k, v in explicit.items() if v is not None}
    if settings.weight_format == "fp16":
        knobs = sorted(given | ({"awq"} if settings.awq else set()) | (
            {"scale_estimation"} if settings.scale_estimation else set()))
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
    if settings.weight_format == "int8":
        for knob in ("group_size", "ratio", "all_layers", "backup_precision"):
            if knob in given:
                raise BadParameterError(f"--{knob.replace('_', '-')} only applies to int4 weights", knob)
        if settings.data_aware:
            raise BadParameterError("--awq and --scale-estimation only apply to int4 weights", "awq")
    if device == "npu":
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
    extra = [s for s, on in (("awq", settings.awq), ("scale-estimation", settings.scale_estimation)) if on]
    layers = "all layers" if settings.all_layers else "embeddings/lm_head in backup"
    return (f"int4 {'sym' if settings.sym else 'asym'} {group}, ratio {settings.ratio:g}, {layers}"
            + (f", {', '.join(extra)}" if extra else ""))
