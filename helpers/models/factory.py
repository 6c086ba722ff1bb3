"""One door for every model: ``load_model(spec)`` returns a :class:`LoadedModel`.

Accepted specs (all go through ``open_clip.create_model_and_transforms``):

- ``"ViT-B-16/openai"`` or ``load_model("ViT-B-16", "openai")``: an open_clip architecture and pretrained tag;
- ``load_model("ViT-B-16", "/path/weights.safetensors")``: an architecture and a local checkpoint file (``~`` is
  expanded; in one string: ``"ViT-B-16//path/weights.safetensors"``, see :func:`split_spec`);
- ``load_model("ViT-B-32", "random")``: random weights, seeded (benchmarks and tests); options in the tag,
  ``"ViT-B-16/random-seed1-img32-ctx8-layers2"`` (seed, input size, text length, blocks per tower), the form
  such a model's id takes, so a notebook's ``model`` parameter can ask for a reduced random model;
- ``"pocket:small"`` (or ``"pocket"``, ``"pocket:tiny-100"``...): the package's own small CLIP, trained on the mirrored data
  on first use and cached; then loaded from its checkpoint file like any other local checkpoint.

Checkpoints load with ``weights_only=True`` (or from safetensors): loading never executes code.

Models that *change* a loaded model — fine-tuned towers, edited weights, learned prompts — are made by
:func:`derive`: a new :class:`LoadedModel` whose id is the parent's id + a tag + a hash of what changed, so its
features and trained artifacts are cached like any model's, and whose unchanged tensors are shared with the
parent (which stays as it was).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import os
import re
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from safetensors import SafetensorError

from ..errors import DamagedCheckpointError, UnknownModelError, WeightsUnavailableError, clause
from ..io import sha256_file, sha256_json

CONFIG_DIR = Path(__file__).with_name("configs")
open_clip.add_model_config(CONFIG_DIR)  # registers pocket-vit-* like any built-in architecture


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_SIMPLE = (type(None), bool, int, float, complex, str, bytes)


def _source_hash(obj) -> str | None:
    from ..cache import code_hash

    try:
        return code_hash(obj)
    except (OSError, TypeError, SyntaxError, IndentationError):  # no source (built in, typed at a prompt)
        return None


def _code_fingerprint(code: types.CodeType, globals_: dict, depth: int = 0) -> list:
    """What a code object does: its bytecode, constants (nested code included) and the simple module-level values
    it reads; line numbers are left out."""
    consts = [_code_fingerprint(c, globals_, depth + 1) if isinstance(c, types.CodeType) else repr(c)
              for c in code.co_consts]
    read = {n: repr(globals_[n]) for n in code.co_names if n in globals_ and isinstance(globals_[n], _SIMPLE)}
    return [code.co_code.hex(), consts, list(code.co_names), read]


def _fingerprint(obj, depth: int = 0):
    """A JSON-able description of ``obj`` that changes when what it computes changes, as far as can be seen: the
    repr of plain values and of objects that print what they are; for functions their source and bytecode, default
    arguments and closure values; for objects printed as ``<... at 0x...>`` their class's source and attributes."""
    if depth > 6:
        return type(obj).__qualname__
    if isinstance(obj, _SIMPLE):
        return repr(obj)
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_fingerprint(x, depth + 1) for x in obj]
        return sorted(map(repr, items)) if isinstance(obj, (set, frozenset)) else items
    if isinstance(obj, dict):
        return {str(k): _fingerprint(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        arr = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        return [str(arr.dtype), list(arr.shape), hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()]
    if isinstance(obj, functools.partial):
        return {"partial": _fingerprint(obj.func, depth + 1), "args": _fingerprint(obj.args, depth + 1),
                "keywords": _fingerprint(obj.keywords, depth + 1)}
    if isinstance(obj, types.MethodType):
        return {"method": _fingerprint(obj.__func__, depth + 1), "self": _fingerprint(obj.__self__, depth + 1)}
    if isinstance(obj, types.FunctionType):
        cells = []
        for c in obj.__closure__ or ():
            try:
                cells.append(_fingerprint(c.cell_contents, depth + 1))
            except ValueError:  # an empty cell
                cells.append(None)
        return {"function": f"{obj.__module__}.{obj.__qualname__}", "source": _source_hash(obj),
                "code": _code_fingerprint(obj.__code__, obj.__globals__), "closure": cells,
                "defaults": _fingerprint(obj.__defaults__, depth + 1),
                "kwdefaults": _fingerprint(obj.__kwdefaults__, depth + 1)}
    text = repr(obj)
    if not _ADDRESS.search(text):
        return text
    cls = type(obj)
    attrs = vars(obj) if hasattr(obj, "__dict__") and not isinstance(obj, types.ModuleType) else {}
    return {"object": f"{cls.__module__}.{cls.__qualname__}", "source": _source_hash(cls),
            "attrs": _fingerprint({k: v for k, v in attrs.items() if not k.startswith("__")}, depth + 1)}


def _opaque_callables(t, depth: int = 0) -> list:
    """Fingerprints of the parts of transform ``t`` whose repr does not say what they do: ``Lambda``'s function,
    plain functions and partials, and objects printed as ``<... at 0x...>``. Composed transforms are walked."""
    from torchvision.transforms import Lambda

    if depth > 20:
        return []
    if isinstance(t, Lambda):
        return [_fingerprint(t.lambd)]
    subs = getattr(t, "transforms", None)
    if isinstance(subs, (list, tuple, torch.nn.ModuleList, torch.nn.Sequential)):
        return [f for sub in subs for f in _opaque_callables(sub, depth + 1)]
    if isinstance(t, (types.FunctionType, types.MethodType, functools.partial)) or _ADDRESS.search(repr(t)):
        return [_fingerprint(t)]
    return []


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: Any  # PIL image -> tensor (C, H, W)
    tokenizer: Any  # list[str] -> LongTensor (N, context_length)
    model_id: str  # what identifies the weights, e.g. "ViT-B-16/openai" or "pocket-vit-s/sha256:ab12..."
    arch: str
    pretrained: str | None
    checkpoint_sha256: str | None
    device: torch.device
    precision: str
    interpolation: str
    info: dict = field(default_factory=dict)  # e.g. the pocket CLIP's training report
    name: str = ""  # how it was asked for ("pocket:small", "ViT-B-16/openai"); derived: parent name + "+tag"
    parent: str | None = None  # model_id of the model it was derived from
    image_id: str = ""  # the id that determines image features (a derived model with the parent's image tower
    text_id: str = ""  # keeps the parent's image_id, so its image features are not extracted again); text likewise
    head: tuple[np.ndarray, np.ndarray] | None = None  # (C, D) weight and (C,) bias of a trained classifier head
    class_text: tuple[tuple[str, ...], np.ndarray] | None = None  # learned prompts: class names, (C, D) embeddings

    def __post_init__(self):
        self.name = self.name or self.model_id
        self.image_id = self.image_id or self.model_id
        self.text_id = self.text_id or self.model_id

    @property
    def transform_id(self) -> str:
        """Text that changes whenever the preprocessing changes (part of every feature-cache key).

        The transform's repr, which for the standard open_clip / torchvision transforms lists every setting; where
        a part's repr does not say what it does (a ``Lambda``, a plain function or partial, an object printed as
        ``<... at 0x...>``), a hash of its code and of the values it captures (closure, default arguments, simple
        module-level values it reads) is appended, so that two custom transforms never share cached features.
        """
        text = " ".join(_ADDRESS.sub("", repr(self.preprocess)).split())
        opaque = _opaque_callables(self.preprocess)
        return f"{text} code:{sha256_json(opaque)[:16]}" if opaque else text


VISUAL_PREFIX = "visual."


def _hash_tensors(h, named: dict) -> None:
    for k in sorted(named):
        v = named[k]
        arr = v.detach().cpu().float().contiguous().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, np.float32)
        h.update(k.encode())
        h.update(np.ascontiguousarray(arr).tobytes())


def derive(loaded: LoadedModel, tag: str, *, weights: dict[str, torch.Tensor] | None = None,
           modules: dict[str, torch.nn.Module] | None = None, head: tuple | None = None,
           class_text: tuple[list[str], np.ndarray] | None = None, info: dict | None = None) -> LoadedModel:
    """A model derived from ``loaded``: the same model with some parameters, submodules, a head or learned class
    prompts replaced. ``loaded`` itself is not modified.

    - ``weights``: ``{parameter name: tensor}`` (names as in ``model.named_parameters()``), e.g. a SeTAR edit;
    - ``modules``: ``{attribute: module}`` of top-level submodules, e.g. ``{"visual": fine_tuned_tower}``;
    - ``head``: ``(weight (C, D), bias (C,))`` of a classifier on the normalised image embedding;
    - ``class_text``: ``(class names, (C, D) normalised embeddings)`` of learned prompts (CoOp); the derived model's
      :func:`helpers.features.text_features` answers with them for exactly these class names.

    The id is ``<parent id>+<tag>:<hash>``, the hash covering every replaced tensor, so equal changes give equal
    ids (and cache hits). Unchanged tensors are shared with the parent, not copied; treat them as read-only.
    ``image_id`` changes only when the image tower changed (weights under ``visual.`` or the ``visual`` module), so
    a model with learned prompts reuses the parent's cached image features; ``text_id`` likewise.
    """
    weights, modules = dict(weights or {}), dict(modules or {})
    params = dict(loaded.model.named_parameters())
    _check_replacements(loaded, params, weights)
    digest = _derived_digest(tag, weights, modules, head, class_text)
    model = _structural_copy(loaded.model, params, weights, modules)
    image_changed = "visual" in modules or any(k.startswith(VISUAL_PREFIX) for k in weights)
    text_changed = class_text is not None or any(not k.startswith(VISUAL_PREFIX) for k in weights) or any(
        k != "visual" for k in modules)
    model_id = f"{loaded.model_id}+{tag}:{digest[:12]}"
    return dataclasses.replace(
        loaded, model=model, model_id=model_id, name=f"{loaded.name}+{tag}", parent=loaded.model_id,
        image_id=model_id if image_changed else loaded.image_id, text_id=model_id if text_changed else loaded.text_id,
        head=(np.asarray(head[0], np.float32), np.asarray(head[1], np.float32)) if head is not None else loaded.head,
        class_text=(tuple(class_text[0]), np.asarray(class_text[1], np.float32)) if class_text is not None
        else loaded.class_text,
        info={**loaded.info, **(info or {}), "derived_from": loaded.model_id, "tag": tag})


def _check_replacements(loaded: LoadedModel, params: dict, weights: dict) -> None:
    unknown = [k for k in weights if k not in params]
    if unknown:
        close = difflib.get_close_matches(unknown[0], params, n=3)
        raise KeyError(f"derive: {loaded.model_id} has no parameter {unknown[0]!r} (close: {close})")
    for k, v in weights.items():
        if tuple(v.shape) != tuple(params[k].shape):
            raise ValueError(f"derive: {k} has shape {tuple(params[k].shape)}, the replacement {tuple(v.shape)}")


def _derived_digest(tag: str, weights: dict, modules: dict, head, class_text) -> str:
    """sha256 of the tag and every replaced tensor, module state, head and learned class prompt."""
    h = hashlib.sha256(tag.encode())
    _hash_tensors(h, weights)
    for name in sorted(modules):
        _hash_tensors(h, {f"{name}.{k}": v for k, v in modules[name].state_dict().items()})
    if head is not None:
        _hash_tensors(h, {"head.weight": head[0], "head.bias": head[1]})
    if class_text is not None:
        h.update("\x1f".join(class_text[0]).encode())
        _hash_tensors(h, {"class_text": class_text[1]})
    return h.hexdigest()


def _structural_copy(model: torch.nn.Module, params: dict, weights: dict, modules: dict) -> torch.nn.Module:
    """A copy of ``model`` that shares every tensor except the replaced ``weights`` and top-level ``modules``."""
    replaced = set(weights) | {k for k in params if k.split(".", 1)[0] in modules}
    memo = {id(t): t for k, t in [*model.named_parameters(), *model.named_buffers()] if k not in replaced}
    memo.update({id(getattr(model, name)): m for name, m in modules.items()})
    out = copy.deepcopy(model, memo)
    for name, m in modules.items():
        setattr(out, name, m)
    for k, v in weights.items():
        owner, _, attr = k.rpartition(".")
        target = out.get_submodule(owner) if owner else out
        setattr(target, attr, torch.nn.Parameter(v.detach().to(params[k].device, params[k].dtype),
                                                 requires_grad=params[k].requires_grad))
    return out


def _check_arch(arch: str) -> None:
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5, cutoff=0.6)
        pocket = ""
        if arch.lower().startswith("pocket"):  # "pocket-small", "pocket_teaching": a pocket CLIP config meant
            from .pocket import CONFIGS, suggest_pocket

            names = suggest_pocket(re.sub(r"^pocket[-_: ]*", "", arch.lower()))
            pocket = (f"Did you mean {' or '.join(f'pocket:{n}' for n in names)}? " if names else "") + (
                f"The pocket CLIPs are asked for as pocket:<config> ({', '.join(f'pocket:{n}' for n in CONFIGS)}); "
                f"pocket-vit-* are their bare architectures. ")
        raise UnknownModelError(
            f"Unknown open_clip architecture {arch!r}. {pocket}Close matches: {close or 'none'}. "
            f"See open_clip.list_models() for all {len(open_clip.list_models())} architectures."
        )


def _is_local_file(pretrained: str | None) -> bool:
    return bool(pretrained) and os.path.isfile(str(pretrained))


def _expand(pretrained: str | None) -> str | None:
    return os.path.expanduser(pretrained) if pretrained and str(pretrained).startswith("~") else pretrained


def split_spec(spec: str, pretrained: str | None = None) -> tuple[str, str | None]:
    """``"ARCH/TAG"`` -> ``("ARCH", "TAG")``: everything after the first ``/`` is the pretrained tag or checkpoint
    file, so one string can name a file too: ``"ViT-B-16//abs/w.safetensors"`` (absolute path),
    ``"ViT-B-16/~/w.safetensors"`` (``~`` is expanded) and ``"ViT-B-16/ckpt/w.safetensors"`` (relative to the
    current folder; a notebook runs in ``notebooks/``). An explicit ``pretrained`` wins (``~`` expanded too);
    ``hf-hub:`` and ``local-dir:`` specs are left whole."""
    if pretrained is None and "/" in spec and not spec.startswith(("hf-hub:", "local-dir:")):
        arch, pretrained = spec.split("/", 1)
        return arch, _expand(pretrained)
    return spec, _expand(pretrained)


class _DownloadErrorFilter(logging.Filter):
    """Drops open_clip's "Failed to download weights" log record: the same text arrives in the RuntimeError that
    :func:`load_model` turns into :class:`WeightsUnavailableError`, which says what to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to download")


@contextlib.contextmanager
def _quiet_download_errors():
    root, drop = logging.getLogger(), _DownloadErrorFilter()  # open_clip logs through the root logger
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


TRAIN_INFO = "train.json"  # a pocket CLIP's training report, beside its checkpoint file


def checkpoint_info(arch: str, checkpoint: str) -> dict:
    """The training report (``train.json``) beside the local checkpoint file ``checkpoint``, whatever path names it
    (a doubled slash, ``..``, a link: the folder of the normalised path, then of the link's target); it holds the
    class names a pocket CLIP was pretrained on. Without one, a pocket architecture gets
    ``{"train_info_missing": <where it was looked for>}`` (:func:`helpers.benchmark.warn_unknown_classes` says so),
    any other architecture (published weights: an open vocabulary) ``{}``."""
    folders = dict.fromkeys(Path(f(os.path.expanduser(checkpoint))).parent for f in (os.path.abspath, os.path.realpath))
    for folder in folders:
        path = folder / TRAIN_INFO
        try:
            report = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            warnings.warn(f"{path} does not read as a training report ({e}); it is ignored", stacklevel=3)
            continue
        if isinstance(report, dict):
            return report
    return {"train_info_missing": str(next(iter(folders)) / TRAIN_INFO)} if arch.startswith("pocket-") else {}


# random weights with options in the tag, the form a random model's id takes: "ViT-B-16/random-seed0-img32-ctx8"
# and "-layers2" keeps the first 2 blocks of each tower (the architecture's widths, heads and projections, less depth)
RANDOM_SPEC = re.compile(r"random(?:-seed(?P<seed>\d+))?(?:-img(?P<img>\d+))?(?:-ctx(?P<ctx>\d+))?"
                         r"(?:-layers(?P<layers>\d+))?")


def _keep_blocks(model: torch.nn.Module, layers: int) -> None:
    """Cut both towers of a random-weight CLIP to their first ``layers`` residual blocks (a cheaper stand-in for
    tests that exercise a big architecture's code path; every method finds the blocks through ``resblocks``)."""
    for tower in (model.visual.transformer, model.transformer):
        if not 1 <= layers <= len(tower.resblocks):
            raise ValueError(f"-layers{layers}: the architecture has {len(tower.resblocks)} blocks per tower")
        tower.resblocks = torch.nn.ModuleList(list(tower.resblocks)[:layers])
        tower.layers = layers


def _damaged_checkpoint(arch: str, path: str, e: Exception) -> DamagedCheckpointError:
    """The error for a local checkpoint file that does not read: the file, its size, what failed and the fix."""
    size = os.path.getsize(path)
    return DamagedCheckpointError(
        f"Checkpoint {path} ({size:,} bytes) for {arch!r} does not read: {type(e).__name__}: "
        f"{clause(str(e).splitlines()[0] if str(e) else e)}. It is cut short, overwritten or not a checkpoint of "
        f"this architecture. Fix: copy the file again from where it was trained (with its train.json), or, for a "
        f"pocket CLIP, load it by name (load_model('pocket:<config>')), which verifies and retrains a damaged one.")


def load_model(
    spec: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    interpolation: str | None = None,
    resize_mode: str | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    image_size: int | None = None,
    context_length: int | None = None,
) -> LoadedModel:
    """Create a model, its preprocessing transform and tokenizer; see the module docstring for ``spec``.

    ``interpolation`` (``"bicubic"``, open_clip's default, or ``"bilinear"`` as in MCM's code) and
    ``resize_mode`` override the preprocessing; ``precision`` is open_clip's (``fp32``, ``bf16``, ``fp16``,
    ``amp``...). ``seed`` fixes random initialisation when no weights are loaded.
    ``image_size`` / ``context_length`` override the architecture's input size and text length (open_clip's
    ``force_image_size`` / ``force_context_length``; tests use them to run ``ViT-B-16`` on tiny inputs); both
    become part of ``model_id``.
    """
    args = dict(device=device, precision=precision, interpolation=interpolation, resize_mode=resize_mode, seed=seed,
                image_size=image_size, context_length=context_length)
    if spec == "pocket" or spec.startswith("pocket:"):
        return _load_pocket(spec, **args)
    arch, pretrained = split_spec(spec, pretrained)
    _check_arch(arch)
    layers = None
    if (opts := RANDOM_SPEC.fullmatch(str(pretrained))) is not None:  # "random-seed1-img32-ctx8", as model ids read
        pretrained = "random"
        layers = int(opts["layers"]) if opts["layers"] else None
        seed = int(opts["seed"]) if opts["seed"] else seed
        image_size = image_size or (int(opts["img"]) if opts["img"] else None)
        context_length = context_length or (int(opts["ctx"]) if opts["ctx"] else None)
    random_init = pretrained in (None, "", "random", "none")
    if not random_init and not _is_local_file(pretrained):
        _check_pretrained_tag(arch, pretrained)
    torch.manual_seed(seed)
    model, preprocess = _create(arch, None if random_init else pretrained, precision=precision,
                                device=torch.device(device), image_interpolation=interpolation,
                                image_resize_mode=resize_mode, cache_dir=cache_dir, weights_only=True,
                                force_image_size=image_size, force_context_length=context_length)
    if layers:
        _keep_blocks(model, layers)
    model.eval()
    model_id, sha, info = _identity(arch, None if random_init else pretrained, seed)
    # a forced size changes the weights' shapes (and the random draws): it must change every cache key
    model_id += (f"-img{image_size}" if image_size else "") + (f"-ctx{context_length}" if context_length else "")
    model_id += f"-layers{layers}" if layers else ""
    interp = interpolation or getattr(model, "pretrained_cfg", {}).get("interpolation", "bicubic") or "bicubic"
    name = spec if pretrained is None or "/" in spec else f"{arch}/{Path(str(pretrained)).name}"
    return LoadedModel(model, preprocess, open_clip.get_tokenizer(arch, context_length=context_length), model_id,
                       arch, None if random_init else str(pretrained), sha, torch.device(device), precision, interp,
                       name=name, info=info)



def _identity(arch: str, pretrained: str | None, seed: int) -> tuple[str, str | None, dict]:
    """``(model id, sha256 of a local checkpoint or None, its training report or {})``: a random model is named by
    its seed, a local file by its content, a published one by its tag."""
    if pretrained is None:
        return f"{arch}/random-seed{seed}", None, {}
    if _is_local_file(pretrained):
        sha = sha256_file(pretrained)
        return f"{arch}/sha256:{sha[:16]}", sha, checkpoint_info(arch, pretrained)
    return f"{arch}/{pretrained}", None, {}

def _load_pocket(spec: str, **args) -> LoadedModel:
    """``pocket`` / ``pocket:<config>``: the pocket CLIP's checkpoint (trained first if not cached), loaded as a
    local checkpoint file."""
    from .pocket import CONFIGS, DEFAULT, pocket_checkpoint, unknown_pocket_error

    _, _, name = spec.partition(":")
    if name and name not in CONFIGS:
        raise unknown_pocket_error(name)
    arch, ckpt, info = pocket_checkpoint(name or DEFAULT, device=args["device"])
    loaded = load_model(arch, str(ckpt), **args)
    loaded.info, loaded.name = info, spec
    return loaded


def _check_pretrained_tag(arch: str, pretrained: str) -> None:
    """``UnknownModelError`` unless ``pretrained`` is one of open_clip's tags for ``arch``; says whether it looks
    like a missing file or a mistyped tag, with close matches."""
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained in tags:
        return
    looks_like_path = os.sep in str(pretrained) or str(pretrained).endswith((".pt", ".pth", ".bin", ".safetensors"))
    where = "" if os.path.isabs(str(pretrained)) else (
        f" (a relative path is taken from the current folder, {os.getcwd()}; a notebook runs in notebooks/)")
    hint = (f"the checkpoint file {pretrained} does not exist{where}" if looks_like_path
            else f"known tags for {arch}: {tags or 'none'}; close matches: "
                 f"{difflib.get_close_matches(str(pretrained), tags, n=3, cutoff=0.4) or 'none'}")
    raise UnknownModelError(f"Unknown pretrained weights {pretrained!r} for {arch!r}: {hint}.")


def _create(arch: str, pretrained: str | None, **kwargs):
    """open_clip's model and preprocessing; a damaged local file or weights that cannot be downloaded become the
    package's clear errors."""
    try:
        with _quiet_download_errors():
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained, **kwargs)
    except (RuntimeError, SafetensorError, EOFError) as e:
        if _is_local_file(pretrained):
            raise _damaged_checkpoint(arch, str(pretrained), e) from e
        if "download" in str(e).lower() or "offline" in str(e).lower() or "connect" in str(e).lower():
            raise WeightsUnavailableError(
                f"Weights {arch}/{pretrained} are not in the local cache and cannot be downloaded here ({e}). "
                f"Fix: on a machine with internet run `python -c \"import open_clip; "
                f"open_clip.create_model_and_transforms('{arch}', '{pretrained}')\"` and copy the Hugging Face "
                f"cache (~/.cache/huggingface) here, or pass the checkpoint file as pretrained."
            ) from e
        raise
    return model, preprocess
