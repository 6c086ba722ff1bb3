"""The detector interface and the registry by name.

A detector is a small class in the style of pytorch-ood's detectors:

- ``name`` — its registry name (``"mcm"``, ``"knn"`` ...) and ``title`` — how tables print it;
- constructor keyword arguments — every convention that changes the numbers (temperature, prompts, k, feature
  kind...), with the published default; they are recorded in :attr:`Detector.params` and printed in
  :attr:`Detector.label`, so two settings of one detector never share a row;
- ``needs`` — the image feature kinds it scores (``"image"``, ``"local"``, ``"preproj"``), ``fits_on`` — what
  :meth:`fit` needs beyond the model (``"train"``: labelled ID training features);
- :meth:`fit` — text embeddings from the model, a probe, a memory bank... (optional);
- :meth:`score` — written once in **torch**, on batches of features, differentiable where the formula is;
  higher = more in-distribution. :meth:`__call__` is the numpy convenience used by :func:`helpers.evaluation.evaluate`.
- :meth:`logits` — the class logits behind the score where there is a classifier (ID accuracy), else None.

Register a new detector with ``@register`` and it is usable by name everywhere (``get("my-name", k=3)``,
notebook parameters such as ``detectors = ["mcm", {"name": "knn", "k": 5}]``); a detector outside the package is
named by its import path, ``"my_module:MyDetector"``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import pkgutil
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ClipOODError, NonFiniteError

REGISTRY: dict[str, type[Detector]] = {}


class UnknownDetectorError(ClipOODError, KeyError):
    """A detector name that is not registered (and not an importable ``module:Class``)."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make ``cls`` available by ``cls.name``."""
    if not getattr(cls, "name", None):
        raise ValueError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"detector name {cls.name!r} is taken by {REGISTRY[cls.name].__module__}."
                         f"{REGISTRY[cls.name].__name__}")
    REGISTRY[cls.name] = cls
    return cls


def _load_package_detectors() -> None:
    """Import every module of :mod:`helpers.detectors`, so each ``@register`` has run."""
    from .. import detectors

    for info in pkgutil.iter_modules(detectors.__path__):
        importlib.import_module(f"{detectors.__name__}.{info.name}")


def available() -> list[str]:
    """Registered detector names."""
    _load_package_detectors()
    return sorted(REGISTRY)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


class Detector:
    """Base class; see the module docstring."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ("image",)
    fits_on: ClassVar[tuple[str, ...]] = ()
    shown: ClassVar[tuple[str, ...]] = ()  # params always printed in the label (the rest only when not default)
    symbols: ClassVar[dict[str, str]] = {}  # how a param prints in the label, e.g. {"lam": "λ"}

    def __init__(self, **params):
        self.params: dict[str, Any] = params
        self.resolved: dict[str, Any] = {}  # values fixed at fit time, e.g. the model's own temperature
        self.device = torch.device("cpu")
        self.fitted = False

    # ------------------------------------------------------------------ naming
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}

    in_title: ClassVar[tuple[str, ...]] = ()  # params that are part of the title instead (e.g. PLP's score)
    hidden: ClassVar[tuple[str, ...]] = ()  # params left out of the label (sources, seeds: in the params column)

    def _title(self) -> str:
        return self.title or self.name or type(self).__name__  # a custom class may set neither

    @property
    def label(self) -> str:
        """``title (param=value, ...)``: the conventions in :attr:`shown` and every non-default parameter."""
        defaults = self.defaults()
        parts = [f"{self.symbols.get(k, k)}={_fmt(v)}" for k, v in self.params.items()
                 if k not in self.in_title and k not in self.hidden
                 and (k in self.shown or defaults.get(k, object()) != v)]
        return self._title() + (f" ({', '.join(parts)})" if parts else "")

    def params_json(self) -> str:
        """The parameters (and the values resolved at fit time) as sorted JSON: the ``params`` column."""
        return json.dumps({**self.params, **self.resolved}, sort_keys=True, default=str)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"

    # ------------------------------------------------------------------ fitting and scoring
    def fit(self, model, class_names: list[str], train=None) -> Detector:
        """Prepare the detector for ``model`` (a :class:`helpers.models.LoadedModel`) and the ID ``class_names``;
        ``train`` (:class:`helpers.features.Features`) is the labelled ID training split, for those that need it."""
        if "train" in self.fits_on and train is None:
            raise ValueError(f"{self.label} is fitted on ID training features: pass train=<Features of an ID "
                             f"training split> (e.g. load_benchmark(..., train_dataset='cifar10-probe'))")
        self.fitted = True
        return self

    def score(self, **features: torch.Tensor) -> torch.Tensor:
        """Score (N,) of a batch; ``features`` holds the kinds in :attr:`needs` as tensors. Higher = more ID."""
        raise NotImplementedError

    def logits(self, **features: torch.Tensor) -> torch.Tensor | None:
        """Class logits (N, C) of the classifier behind the score, or None when there is none."""
        return None

    def to(self, device) -> Detector:
        self.device = torch.device(device)
        for k, v in vars(self).items():
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(self.device))
        return self

    def _batches(self, features, chunk: int):
        arrays = {k: getattr(features, k, None) if not isinstance(features, Mapping) else features.get(k)
                  for k in self.needs}
        missing = [k for k, v in arrays.items() if v is None]
        if missing:
            where = getattr(features, "dataset", "the features")
            raise ValueError(f"{self.label} needs the feature kind(s) {missing}, which {where} lacks. Fix: extract "
                             f"them, e.g. load_benchmark(..., kinds=('image', 'preproj', 'local')).")
        n = len(next(iter(arrays.values())))
        for i in range(0, n, chunk):
            yield {k: torch.from_numpy(np.array(v[i:i + chunk], dtype=np.float64)).to(self.device)
                   for k, v in arrays.items()}

    @torch.no_grad()
    def __call__(self, features, chunk: int = 1024) -> np.ndarray:
        """Scores (N,) of :class:`~helpers.features.Features` (or a dict of arrays), in float64, ``chunk`` images at
        a time (GL-MCM's patch features of ImageNet do not fit in memory at once)."""
        if not self.fitted:
            raise RuntimeError(f"{self.label} is not fitted: call .fit(model, class_names[, train]) first "
                               f"(helpers.evaluation.evaluate does it)")
        where = getattr(features, "dataset", "the features")
        try:
            out = np.concatenate([self.score(**b).cpu().numpy() for b in self._batches(features, chunk)])
        except RuntimeError as e:  # shape mismatches: features of another model or kind
            raise ValueError(f"{self.label} cannot score {where} ({e}). Fix: give it the {self.needs} features of the "
                             f"model it was fitted with") from e
        if not np.isfinite(out).all():
            raise NonFiniteError(f"{self.label} gave {int((~np.isfinite(out)).sum())} NaN/inf score(s) on {where}; "
                                 f"check the temperature (overflow) and the features")
        return out

    @torch.no_grad()
    def predict_logits(self, features, chunk: int = 1024) -> np.ndarray | None:
        """:meth:`logits` of :class:`~helpers.features.Features` as a numpy array (None without a classifier)."""
        parts = []
        for b in self._batches(features, chunk):
            z = self.logits(**b)
            if z is None:
                return None
            parts.append(z.cpu().numpy())
        return np.concatenate(parts)


def _import_path(spec: str) -> type[Detector]:
    module, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UnknownDetectorError(f"cannot import detector {spec!r} ({e}). Fix: make {module!r} importable "
                                   f"(PYTHONPATH) and define {attr!r} in it") from e
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise UnknownDetectorError(f"{spec!r} is not a helpers.detectors.Detector subclass")
    return cls


def get(spec: str | Mapping | Detector, **params) -> Detector:
    """A detector from a name (``"mcm"``), an import path (``"pkg.mod:Class"``), a dict with ``"name"`` and
    parameters (``{"name": "energy", "T": 1}``), or an instance (returned as is)."""
    if isinstance(spec, Detector):
        if params:
            raise ValueError("pass parameters to the constructor of a detector instance, not to get()")
        return spec
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(f"a detector given as a dict needs a 'name' key: {spec}")
        name = spec.pop("name")
        return get(name, **spec, **params)
    if ":" in spec:
        cls = _import_path(spec)
    else:
        _load_package_detectors()
        if spec not in REGISTRY:
            close = difflib.get_close_matches(spec, REGISTRY, n=3, cutoff=0.5)
            raise UnknownDetectorError(f"unknown detector {spec!r}{f' (did you mean {close}?)' if close else ''}; "
                                       f"registered: {sorted(REGISTRY)}, or give 'module:Class'")
        cls = REGISTRY[spec]
    try:
        return cls(**params)
    except TypeError as e:
        raise TypeError(f"detector {spec!r}: {e}; its parameters are {cls.defaults()}") from e


def with_defaults(specs, **per_name: dict) -> list:
    """``specs`` with parameters added per detector name (``plp={"epochs": 10}``), where the detector's class takes
    them and the spec does not set them itself: notebook-wide settings (probe epochs, NegLabel's word source) given
    once instead of in every spec."""
    out = []
    for spec in specs:
        d = get(spec)
        extra = {k: v for k, v in per_name.get(d.name, {}).items() if k in d.params and
                 not (isinstance(spec, Mapping) and k in spec)}
        out.append({"name": d.name, **d.params, **extra} if extra else spec)
    return out
