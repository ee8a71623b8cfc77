"""Export a transformers causal LM (a model folder, or a GGUF file dequantised through
transformers) to ONNX with past key values, and build its int8 copy; both cached on disk.

The export runs in a child process (``python -m smallfit.backends.onnx_export SOURCE OUT``):
torch and the fp32 model never enter the process whose memory and time are measured, and the
candidate's worker needs only onnxruntime. An export is cached under
``cache_dir()/onnx/<stem>-<sha256 of the source files' content>/`` and is written to a temporary
folder that is renamed when complete, so an interrupted export never looks finished.

Graph interface (the one optimum's ``text-generation-with-past`` exports have): inputs
``input_ids``, ``attention_mask`` (batch, past + new), ``position_ids`` and
``past_key_values.N.key|value`` (batch, kv heads, past, head dim), outputs ``logits`` and
``present.N.key|value``. The first step feeds a zero-length past.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from smallfit.cache import cache_dir
from smallfit.errors import MissingExtraError, SmallfitError

EXPORT_FORMAT = 1  # bump when the exported graph changes, so old caches are not reused
OPSET = 17
MARKER = "smallfit-export.json"
# the files of a transformers folder that shape an export (weights, config, tokenizer, template)
_SOURCE_GLOBS = ("*.safetensors", "*.json", "*.jinja", "*.model", "*.txt")
_VERIFY_MAX_ABS_LOGIT_DIFF = 1e-2


# -- content hashes (memoised by path, size and mtime) ------------------------------------

def _hash_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def content_sha256(source: Path) -> str:
    """sha256 of the content of a file, or of a folder's model files (name and content, sorted).

    Remembered in ``cache_dir()/onnx/hashes.json`` under each file's path, size and mtime, so
    an unchanged source is not read again."""
    files = [source] if source.is_file() else sorted({f for g in _SOURCE_GLOBS for f in source.glob(g)})
    stamp = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    memo_file = cache_dir() / "onnx" / "hashes.json"
    try:
        memo: dict[str, str] = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if stamp in memo:
        return memo[stamp]
    sha = _hash_files(files)
    memo[stamp] = sha
    memo_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo_file.with_name(f"hashes.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo, indent=0))
    os.replace(tmp, memo_file)
    return sha


def cached_folder(source: Path) -> Path:
    """Where the export of ``source`` (a GGUF file or transformers folder) is cached."""
    stem = source.stem if source.is_file() else source.resolve().name
    return cache_dir() / "onnx" / f"{stem}-{content_sha256(source)[:16]}"


# -- the parent's side: find or build ---------------------------------------------------

def export_cached(source: Path) -> tuple[Path, float | None]:
    """The cached export folder of ``source``, exporting it first if needed (in a child
    process); also the seconds the export took in this call (None when it was cached)."""
    target = cached_folder(source)
    if _complete(target):
        return target, None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "smallfit.backends.onnx_export", str(source), str(tmp)],
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not (tmp / MARKER).is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        lines = [ln.strip() for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit code {proc.returncode}"
        raise SmallfitError(f"ONNX export of {source} failed: {why}")
    if _complete(target):  # another process finished the same export first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(target, ignore_errors=True)  # a leftover without its marker
        os.replace(tmp, target)
    return target, seconds


def _complete(folder: Path) -> bool:
    """A finished export of the current format."""
    try:
        return int(json.loads((folder / MARKER).read_text()).get("format", 0)) == EXPORT_FORMAT
    except (OSError, ValueError):
        return False


INT8_RECIPE = ("onnxruntime.quantization.quantize_dynamic: QInt8 weights per channel, activations "
               "quantized at run time (uint8); MatMul with constant weights and Gather (embeddings)")


def int8_cached(fp32: Path, folder: Path) -> tuple[Path, float | None]:
    """The int8 dynamic-quantized copy of ``fp32`` as ``folder/<stem>.int8.onnx``, made first
    if needed; also the seconds that took (None when cached)."""
    target = folder / f"{fp32.stem}.int8.onnx"
    if target.is_file():
        return target, None
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnx") from None
    # built in a temporary folder under its final name (an external-data file is named after
    # it), then moved: the model file last, as its presence means "done"
    tmp = folder / f".int8.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    large = onnx_files_bytes(fp32) > 2**31 - 2**24  # protobuf's 2 GiB limit, with room
    t0 = time.perf_counter()
    try:
        quantize_dynamic(fp32, tmp / target.name, weight_type=QuantType.QInt8, per_channel=True,
                         use_external_data_format=large, extra_options={"MatMulConstBOnly": True})
    except Exception as exc:  # noqa: BLE001 - the quantizer raises many types; all mean "failed"
        shutil.rmtree(tmp, ignore_errors=True)
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SmallfitError(f"int8 quantization of {fp32} failed: {why}") from None
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == target.name):
        os.replace(f, folder / f.name)
    shutil.rmtree(tmp, ignore_errors=True)
    return target, time.perf_counter() - t0


def onnx_files_bytes(model: Path) -> int:
    """Bytes on disk of an .onnx file and its external-data file, if it has one under one of
    the usual names (``model.onnx_data``, ``model.onnx.data``, ``model.data``)."""
    total = model.stat().st_size
    for name in (model.name + "_data", model.name + ".data", model.stem + ".data"):
        extra = model.with_name(name)
        if extra.is_file():
            total += extra.stat().st_size
    return total


# -- the child's side: the export itself -------------------------------------------------

def _libraries() -> tuple[Any, Any, Any]:
    try:
        import numpy
        import torch
        import transformers
    except ImportError:
        raise MissingExtraError("torch/transformers", "hf") from None
    return numpy, torch, transformers


def _export(source: Path, out: Path) -> None:
    np, torch, tf = _libraries()
    from smallfit.backends.hf import gguf_to_safetensors

    t0 = time.perf_counter()
    if source.is_file():
        with open(source, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise SmallfitError(f"{source} is neither a GGUF file nor a model folder")
        folder = gguf_to_safetensors(source)
    else:
        if not any(source.glob("*.safetensors")):
            raise SmallfitError(f"{source} has no safetensors weights to export (pickle checkpoints are not loaded)")
        folder = source
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        model = tf.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager", trust_remote_code=False, use_safetensors=True,
        ).eval()
    except (OSError, ValueError) as exc:
        raise SmallfitError(f"transformers could not load {folder}: {str(exc).splitlines()[0]}") from None
    wrapper = _flat_module(model, torch, tf)
    layers, heads, dim = wrapper.layers, wrapper.heads, wrapper.dim
    names_past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    names_present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"},
        **{n: {0: "batch", 2: "past"} for n in names_past}, **{n: {0: "batch", 2: "total"} for n in names_present},
    }
    # traced with a non-empty past (2 rows, 3 new tokens on 4 cached) so no size is baked in
    batch, new, cached = 2, 3, 4
    args = (torch.randint(0, 100, (batch, new)), torch.ones(batch, cached + new, dtype=torch.long),
            torch.arange(cached, cached + new).expand(batch, new),
            *[torch.randn(batch, heads, cached, dim) for _ in names_past])
    out.mkdir(parents=True)
    with torch.no_grad():
        torch.onnx.export(wrapper, args, str(out / "model.onnx"), dynamo=False, opset_version=OPSET,
                          input_names=["input_ids", "attention_mask", "position_ids", *names_past],
                          output_names=["logits", *names_present], dynamic_axes=axes)
    export_s = time.perf_counter() - t0
    diff = _verify(out / "model.onnx", model, names_past, (heads, dim), torch, np)
    if not diff <= _VERIFY_MAX_ABS_LOGIT_DIFF:
        raise SmallfitError(f"the exported graph's logits differ from torch's by {diff:.3g} (over "
                            f"{_VERIFY_MAX_ABS_LOGIT_DIFF}); this architecture does not export correctly yet")
    tokenizer.save_pretrained(out)  # with its chat template
    model.config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    meta = {"source": str(source.resolve()), "weights": str(folder), "sha256": content_sha256(source),
            "format": EXPORT_FORMAT, "opset": OPSET, "export_s": round(export_s, 3),
            "verify_max_abs_logit_diff": diff, "torch_version": torch.__version__,
            "transformers_version": tf.__version__}
    (out / MARKER).write_text(json.dumps(meta, indent=1) + "\n")  # last: marks the folder complete


def _flat_module(model: Any, torch: Any, tf: Any) -> Any:
    """The exported module: forward(input_ids, attention_mask, position_ids, *flat past) ->
    (logits, *flat present), with the model's Cache object built inside (defined here so that
    torch is imported only in the export process)."""

    class Flat(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            cfg = model.config.get_text_config()
            self.layers = int(cfg.num_hidden_layers)
            self.heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
            self.dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> Any:
            # a plain DynamicCache (full layers): sliding-window models still mask by window
            cache = tf.DynamicCache()
            for i in range(self.layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            result = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                past_key_values=cache, use_cache=True)
            present = []
            for layer in result.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (result.logits, *present)

    return Flat()


def _verify(path: Path, model: Any, names_past: list[str], kv: tuple[int, int], torch: Any, np: Any) -> float:
    """Largest |logit| difference between onnxruntime and torch on 12 tokens: all at once from
    an empty past, and the last 4 on top of the first 8's past."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnx") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ids = torch.randint(0, int(model.config.get_text_config().vocab_size), (1, 12))
    with torch.no_grad():
        want = model(ids).logits.numpy()
    empty = np.zeros((1, kv[0], 0, kv[1]), np.float32)

    def run(lo: int, hi: int, past: list[Any]) -> list[Any]:
        feed = {"input_ids": ids[:, lo:hi].numpy(), "attention_mask": np.ones((1, hi), np.int64),
                "position_ids": np.arange(lo, hi, dtype=np.int64)[None], **dict(zip(names_past, past, strict=True))}
        return list(session.run(None, feed))

    whole = run(0, 12, [empty] * len(names_past))
    first = run(0, 8, [empty] * len(names_past))
    rest = run(8, 12, first[1:])
    return float(max(np.abs(whole[0] - want).max(), np.abs(rest[0] - want[:, 8:]).max()))


def main() -> int:
    """Child entry point: ``python -m smallfit.backends.onnx_export SOURCE OUT``."""
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    try:
        _export(source, out)
    except SmallfitError as exc:
        print(exc, file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; report one line
        print(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
