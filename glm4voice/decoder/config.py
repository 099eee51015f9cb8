"""Read the decoder's `config.yaml` as data and turn it into typed configs.

The released file is CosyVoice hyperpyyaml: `!new:pkg.Class` builds objects,
`!ref <key>` points at another key, `!apply:fn [args]` calls functions (the
seeding lines). We never import or call anything it names: a SafeLoader
subclass turns the tags into plain markers, references are resolved against
the top-level keys, and only the `flow:` and `hift:` sections are read. A class
or an option value this package does not implement is a `CheckpointError`, so
an unsupported checkpoint fails loudly instead of decoding noise.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import CheckpointError

# --------------------------------------------------------------------------- yaml as data


@dataclass
class New:
    """`!new:cls` with its keyword (mapping) or positional (sequence) arguments."""

    cls: str
    kwargs: dict = field(default_factory=dict)
    args: list = field(default_factory=list)


@dataclass
class Ref:
    """`!ref <key>`: resolved against the document's top-level keys."""

    target: str


@dataclass
class Tagged:
    """Any other tag (`!apply:`, `!name:`, ...): kept as inert data."""

    tag: str
    value: object


class _DataLoader(yaml.SafeLoader):
    """SafeLoader that maps hyperpyyaml tags to `New`/`Ref`/`Tagged` markers."""


def _construct_value(loader: _DataLoader, node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


def _new(loader, suffix, node):
    value = _construct_value(loader, node)
    if isinstance(value, dict):
        return New(suffix, kwargs=value)
    if isinstance(value, list):
        return New(suffix, args=value)
    return New(suffix, args=[] if value in ("", None) else [value])


def _ref(loader, node):
    return Ref(str(loader.construct_scalar(node)).strip())


def _other(loader, tag_suffix, node):
    return Tagged(tag_suffix, _construct_value(loader, node))


_DataLoader.add_multi_constructor("!new:", _new)
_DataLoader.add_constructor("!ref", _ref)
_DataLoader.add_multi_constructor("!", _other)

_REF = re.compile(r"^<([A-Za-z0-9_.\-]+)>$")


def load_yaml_data(text: str, source: str = "config.yaml") -> dict:
    """Parse hyperpyyaml text into plain data with `!ref`s resolved."""
    try:
        doc = yaml.load(text, Loader=_DataLoader)  # noqa: S506 - SafeLoader subclass, no object tags
    except yaml.YAMLError as exc:  # one line: what went wrong, and where
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CheckpointError(f"{source}: not valid YAML ({problem}{where})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{source}: expected a mapping at the top level")
    return _resolve(doc, doc, source, depth=0)


def _resolve(value, doc: dict, source: str, depth: int):
    if depth > 50:
        raise CheckpointError(f"{source}: !ref chain too deep (a cycle?)")
    if isinstance(value, Ref):
        match = _REF.match(value.target)
        if not match:
            raise CheckpointError(f"{source}: unsupported !ref expression {value.target!r}")
        node = doc
        for part in match.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                raise CheckpointError(f"{source}: !ref {value.target} names no key")
            node = node[part]
        return _resolve(node, doc, source, depth + 1)
    if isinstance(value, New):
        return New(
            value.cls,
            _resolve(value.kwargs, doc, source, depth + 1),
            _resolve(value.args, doc, source, depth + 1),
        )
    if isinstance(value, dict):
        return {k: _resolve(v, doc, source, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, doc, source, depth + 1) for v in value]
    return value


# --------------------------------------------------------------------------- typed configs


@dataclass
class EncoderConfig:
    """BlockConformerEncoder: block-causal rel-pos Conformer without conv module."""

    input_size: int = 512
    output_size: int = 512
    attention_heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6
    block_size: int = 10


@dataclass
class EstimatorConfig:
    """ConditionalDecoder: the Matcha-TTS 1-D U-Net velocity estimator."""

    in_channels: int = 320
    out_channels: int = 80
    channels: tuple = (256, 256)
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8


@dataclass
class FlowConfig:
    """MaskedDiffWithXvec + InterpolateRegulator + ConditionalCFM."""

    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    vocab_size: int = 16384
    input_frame_rate: float = 12.5
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    regulator_channels: int = 80
    sampling_ratios: tuple = (1, 1)
    t_scheduler: str = "cosine"
    inference_cfg_rate: float = 0.7
    sigma_min: float = 1e-6  # training: noise left at t = 1
    training_cfg_rate: float = 0.2  # training: chance the conditions are dropped (classifier-free guidance)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)


@dataclass
class HiftConfig:
    """HiFTGenerator (NSF + iSTFTNet) with its ConvRNNF0Predictor."""

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 22050
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple = (8, 8)
    upsample_kernel_sizes: tuple = (16, 16)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple = (3, 7, 11)
    resblock_dilation_sizes: tuple = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple = (7, 11)
    source_resblock_dilation_sizes: tuple = ((1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_cond_channels: int = 512

    @property
    def samples_per_frame(self) -> int:
        n = self.hop_len
        for r in self.upsample_rates:
            n *= r
        return n


@dataclass
class DecoderConfig:
    flow: FlowConfig
    hift: HiftConfig


# --------------------------------------------------------------------------- section readers


class _Section:
    """Reads one `!new:` node: checks its class, hands out options, rejects leftovers.

    `ignore` lists training-only options (dropout, loss settings) that do not
    change inference; `require` maps an option to the only values we implement.
    """

    def __init__(self, node, expected: str, where: str, source: str):
        if not isinstance(node, New):
            raise CheckpointError(f"{source}: {where} should be a !new:{expected} object")
        if node.cls.rsplit(".", 1)[-1] != expected:
            raise CheckpointError(f"{source}: {where} is {node.cls}; only {expected} is implemented by glm4voice")
        if node.args:
            raise CheckpointError(f"{source}: {where} ({node.cls}) has positional arguments; expected options")
        self.opts = dict(node.kwargs)
        self.where = f"{where} ({node.cls})"
        self.source = source

    def take(self, key, default, kind=None):
        value = self.opts.pop(key, default)
        if kind is None or isinstance(value, (New, Tagged)):
            return value
        if kind is int:  # every whole-number option here is a count or a size
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(f"{self.source}: {self.where}: option {key}={value!r} must be a positive integer")
            return value
        try:
            if kind is tuple:
                return tuple(tuple(v) if isinstance(v, list) else v for v in value)
            if kind is bool and isinstance(value, str):
                return value.strip().lower() in ("true", "yes", "1")
            return kind(value)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{self.source}: {self.where}: option {key}={value!r} is not a {kind.__name__}"
            ) from exc

    def require(self, key, default, allowed: tuple):
        value = self.take(key, default)
        if value not in allowed:
            raise CheckpointError(
                f"{self.source}: {self.where}: {key}={value!r} is not implemented "
                f"(supported: {', '.join(map(repr, allowed))})"
            )
        return value

    def ignore(self, *keys):
        for key in keys:
            self.opts.pop(key, None)

    def done(self):
        if self.opts:
            raise CheckpointError(
                f"{self.source}: {self.where}: unknown option(s) {', '.join(sorted(self.opts))}; "
                "glm4voice does not implement them"
            )


def _encoder(node, source) -> EncoderConfig:
    s = _Section(node, "BlockConformerEncoder", "flow.encoder", source)
    d = EncoderConfig()
    cfg = EncoderConfig(
        input_size=s.take("input_size", d.input_size, int),
        output_size=s.take("output_size", d.output_size, int),
        attention_heads=s.take("attention_heads", d.attention_heads, int),
        linear_units=s.take("linear_units", d.linear_units, int),
        num_blocks=s.take("num_blocks", d.num_blocks, int),
        block_size=s.take("block_size", d.block_size, int),
    )
    if cfg.output_size % cfg.attention_heads:
        raise CheckpointError(f"{source}: {s.where}: attention_heads ({cfg.attention_heads}) must divide "
                              f"output_size ({cfg.output_size})")  # fmt: skip
    s.require("input_layer", "linear", ("linear",))
    s.require("pos_enc_layer_type", "rel_pos_espnet", ("rel_pos_espnet",))
    s.require("selfattention_layer_type", "block_rel_selfattn", ("block_rel_selfattn",))
    s.require("activation_type", "swish", ("swish",))
    if not s.take("normalize_before", True, bool):
        raise CheckpointError(f"{source}: {s.where}: normalize_before=False is not implemented")
    for flag in ("use_cnn_module", "macaron_style", "use_dynamic_chunk", "use_dynamic_left_chunk"):
        if s.take(flag, False, bool):
            raise CheckpointError(f"{source}: {s.where}: {flag}=True is not implemented")
    if s.take("static_chunk_size", 0) != 0:
        raise CheckpointError(f"{source}: {s.where}: static_chunk_size != 0 is not implemented")
    if s.take("key_bias", True, bool) is not True:
        raise CheckpointError(f"{source}: {s.where}: key_bias=False is not implemented")
    if s.opts.pop("global_cmvn", None) is not None:
        raise CheckpointError(f"{source}: {s.where}: global_cmvn is not implemented")
    s.ignore(
        "dropout_rate",
        "positional_dropout_rate",
        "attention_dropout_rate",
        "gradient_checkpointing",
        "positionwise_conv_kernel_size",
        "cnn_module_kernel",
        "causal",
        "cnn_module_norm",
    )
    s.done()
    if cfg.output_size % cfg.attention_heads:
        raise CheckpointError(f"{source}: {s.where}: output_size must be a multiple of attention_heads")
    return cfg


def _estimator(node, source) -> EstimatorConfig:
    s = _Section(node, "ConditionalDecoder", "flow.decoder.estimator", source)
    d = EstimatorConfig()
    cfg = EstimatorConfig(
        in_channels=s.take("in_channels", d.in_channels, int),
        out_channels=s.take("out_channels", d.out_channels, int),
        channels=tuple(int(c) for c in s.take("channels", list(d.channels))),
        attention_head_dim=s.take("attention_head_dim", d.attention_head_dim, int),
        n_blocks=s.take("n_blocks", d.n_blocks, int),
        num_mid_blocks=s.take("num_mid_blocks", d.num_mid_blocks, int),
        num_heads=s.take("num_heads", d.num_heads, int),
    )
    s.require("act_fn", "gelu", ("gelu",))
    s.ignore("dropout")
    s.done()
    if not cfg.channels:
        raise CheckpointError(f"{source}: {s.where}: channels is empty")
    return cfg


def _cfm_params(node, source) -> dict:
    if isinstance(node, New) and node.cls.rsplit(".", 1)[-1] == "DictConfig":
        node = node.kwargs.get("content", node.kwargs)
    if not isinstance(node, dict):
        raise CheckpointError(f"{source}: flow.decoder.cfm_params should be a mapping")
    return dict(node)


def _flow(node, source) -> FlowConfig:
    s = _Section(node, "MaskedDiffWithXvec", "flow", source)
    d = FlowConfig()
    cfg = FlowConfig(
        input_size=s.take("input_size", d.input_size, int),
        output_size=s.take("output_size", d.output_size, int),
        spk_embed_dim=s.take("spk_embed_dim", d.spk_embed_dim, int),
        vocab_size=s.take("vocab_size", d.vocab_size, int),
        input_frame_rate=s.take("input_frame_rate", d.input_frame_rate, float),
    )
    s.require("output_type", "mel", ("mel",))
    s.ignore("only_mask_loss")
    if "encoder" not in s.opts or "length_regulator" not in s.opts or "decoder" not in s.opts:
        raise CheckpointError(f"{source}: flow needs encoder, length_regulator and decoder sections")
    cfg.encoder = _encoder(s.opts.pop("encoder"), source)

    lr = _Section(s.opts.pop("length_regulator"), "InterpolateRegulator", "flow.length_regulator", source)
    cfg.regulator_channels = lr.take("channels", 80, int)
    cfg.sampling_ratios = tuple(lr.take("sampling_ratios", [1, 1, 1, 1]))
    if lr.take("out_channels", None) not in (None, cfg.regulator_channels):
        raise CheckpointError(f"{source}: {lr.where}: out_channels != channels is not implemented")
    if lr.take("groups", 1, int) != 1:
        raise CheckpointError(f"{source}: {lr.where}: groups != 1 is not implemented")
    lr.done()

    dec = _Section(s.opts.pop("decoder"), "ConditionalCFM", "flow.decoder", source)
    dec.ignore("in_channels", "spk_emb_dim")
    if dec.take("n_spks", 1, int) != 1:
        raise CheckpointError(f"{source}: {dec.where}: n_spks != 1 is not implemented")
    params = _cfm_params(dec.opts.pop("cfm_params", {}), source)
    solver = params.pop("solver", "euler")
    if solver != "euler":
        raise CheckpointError(f"{source}: flow.decoder.cfm_params: solver={solver!r} is not implemented (euler)")
    cfg.t_scheduler = params.pop("t_scheduler", "cosine")
    if cfg.t_scheduler not in ("cosine", "linear"):
        raise CheckpointError(f"{source}: flow.decoder.cfm_params: t_scheduler={cfg.t_scheduler!r} is not implemented")
    try:
        cfg.inference_cfg_rate = float(params.pop("inference_cfg_rate", 0.7))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: flow.decoder.cfm_params: inference_cfg_rate is not a number") from exc
    for key in ("sigma_min", "training_cfg_rate"):  # training only
        try:
            setattr(cfg, key, float(params.pop(key, getattr(cfg, key))))
        except (TypeError, ValueError):
            raise CheckpointError(f"{source}: flow.decoder.cfm_params: {key} is not a number") from None
    params.pop("reg_loss_type", None)
    if params:
        raise CheckpointError(f"{source}: flow.decoder.cfm_params: unknown option(s) {', '.join(sorted(params))}")
    if "estimator" not in dec.opts:
        raise CheckpointError(f"{source}: flow.decoder needs an estimator")
    cfg.estimator = _estimator(dec.opts.pop("estimator"), source)
    dec.done()
    s.done()
    if cfg.regulator_channels != cfg.output_size:
        raise CheckpointError(f"{source}: flow: length_regulator.channels must equal output_size")
    return cfg


def _hift(node, source) -> HiftConfig:
    s = _Section(node, "HiFTGenerator", "hift", source)
    d = HiftConfig()
    istft = s.take("istft_params", {"n_fft": d.n_fft, "hop_len": d.hop_len})
    if not isinstance(istft, dict) or set(istft) - {"n_fft", "hop_len"}:
        raise CheckpointError(f"{source}: {s.where}: istft_params must hold only n_fft and hop_len")
    cfg = HiftConfig(
        in_channels=s.take("in_channels", d.in_channels, int),
        base_channels=s.take("base_channels", d.base_channels, int),
        nb_harmonics=s.take("nb_harmonics", d.nb_harmonics, int),
        sampling_rate=s.take("sampling_rate", d.sampling_rate, int),
        nsf_alpha=s.take("nsf_alpha", d.nsf_alpha, float),
        nsf_sigma=s.take("nsf_sigma", d.nsf_sigma, float),
        nsf_voiced_threshold=s.take("nsf_voiced_threshold", d.nsf_voiced_threshold, float),
        upsample_rates=s.take("upsample_rates", d.upsample_rates, tuple),
        upsample_kernel_sizes=s.take("upsample_kernel_sizes", d.upsample_kernel_sizes, tuple),
        n_fft=int(istft.get("n_fft", d.n_fft)),
        hop_len=int(istft.get("hop_len", d.hop_len)),
        resblock_kernel_sizes=s.take("resblock_kernel_sizes", d.resblock_kernel_sizes, tuple),
        resblock_dilation_sizes=s.take("resblock_dilation_sizes", d.resblock_dilation_sizes, tuple),
        source_resblock_kernel_sizes=s.take("source_resblock_kernel_sizes", d.source_resblock_kernel_sizes, tuple),
        source_resblock_dilation_sizes=s.take(
            "source_resblock_dilation_sizes", d.source_resblock_dilation_sizes, tuple
        ),
        lrelu_slope=s.take("lrelu_slope", d.lrelu_slope, float),
        audio_limit=s.take("audio_limit", d.audio_limit, float),
    )
    f0 = _Section(s.opts.pop("f0_predictor", None), "ConvRNNF0Predictor", "hift.f0_predictor", source)
    if f0.take("num_class", 1, int) != 1:
        raise CheckpointError(f"{source}: {f0.where}: num_class != 1 is not implemented")
    if f0.take("in_channels", cfg.in_channels, int) != cfg.in_channels:
        raise CheckpointError(f"{source}: {f0.where}: in_channels must equal hift.in_channels")
    cfg.f0_cond_channels = f0.take("cond_channels", 512, int)
    f0.done()
    s.done()
    if len(cfg.upsample_rates) != len(cfg.upsample_kernel_sizes):
        raise CheckpointError(f"{source}: {s.where}: upsample_rates and upsample_kernel_sizes differ in length")
    if len(cfg.resblock_kernel_sizes) != len(cfg.resblock_dilation_sizes) or len(
        cfg.source_resblock_kernel_sizes
    ) != len(cfg.source_resblock_dilation_sizes):
        raise CheckpointError(f"{source}: {s.where}: each resblock kernel size needs its dilation list")
    if len(cfg.source_resblock_kernel_sizes) != len(cfg.upsample_rates):
        raise CheckpointError(f"{source}: {s.where}: one source resblock per upsampling stage is required")
    return cfg


def parse_config(text: str, source: str = "config.yaml") -> DecoderConfig:
    """Typed flow and hift configs from config.yaml text (other sections ignored)."""
    doc = load_yaml_data(text, source)
    for key in ("flow", "hift"):
        if key not in doc:
            raise CheckpointError(f"{source}: no `{key}:` section")
    return DecoderConfig(flow=_flow(doc["flow"], source), hift=_hift(doc["hift"], source))


def read_config(path: str | Path) -> DecoderConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from exc
    return parse_config(text, str(path))


def replace(cfg, **changes):
    """dataclasses.replace, re-exported for building variants (tests, benchmarks)."""
    return dataclasses.replace(cfg, **changes)
