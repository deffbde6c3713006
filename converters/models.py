"""The model artifacts the pdf→md route needs: catalogue, check and fetch.

Artifacts live in one folder (``models_dir``) laid out the way docling expects
an ``artifacts_path``::

    <models_dir>/
      docling-project--docling-layout-heron/          layout model (required)
        config.json  model.safetensors  preprocessor_config.json
      docling-project--docling-models/model_artifacts/tableformer/
        fast/      tm_config.json  tableformer_fast.safetensors      table_mode=fast
        accurate/  tm_config.json  tableformer_accurate.safetensors  table_mode=accurate
      RapidOcr/                                       OCR (ocr=force, or auto on scans)
        PP-OCRv6_det_small.onnx  ch_ppocr_mobile_v2.0_cls_mobile.onnx  PP-OCRv6_rec_small.onnx

Checking only looks at files; it imports nothing heavy. Fetching uses docling's
own downloader and needs internet access.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from converters.errors import ConverterFailed, DependencyMissing

__all__ = [
    "ARTIFACTS",
    "LAYOUT",
    "PDF_MD_ROUTE",
    "RAPIDOCR",
    "RAPIDOCR_FILES",
    "TABLEFORMER_ACCURATE",
    "TABLEFORMER_FAST",
    "Artifact",
    "ArtifactStatus",
    "ModelsReport",
    "check_models",
    "fetch_models",
    "missing_files",
    "required_artifacts",
]

PDF_MD_ROUTE = "pdf->md"


@dataclass(frozen=True)
class Artifact:
    """One model folder: each pattern in ``files`` must match at least one file."""

    key: str
    folder: str
    files: tuple[str, ...]
    purpose: str
    required: bool  # the route cannot run at all without it


LAYOUT = Artifact(
    key="layout",
    folder="docling-project--docling-layout-heron",
    files=("config.json", "model.safetensors", "preprocessor_config.json"),
    purpose="layout analysis (RT-DETR v2 'heron'); every PDF job needs it",
    required=True,
)
_TABLEFORMER_ROOT = "docling-project--docling-models/model_artifacts/tableformer"
TABLEFORMER_FAST = Artifact(
    key="tableformer_fast",
    folder=f"{_TABLEFORMER_ROOT}/fast",
    files=("tm_config.json", "tableformer_*.safetensors"),
    purpose="table structure, table_mode=fast (without it tables lose their cells)",
    required=False,
)
TABLEFORMER_ACCURATE = Artifact(
    key="tableformer_accurate",
    folder=f"{_TABLEFORMER_ROOT}/accurate",
    files=("tm_config.json", "tableformer_*.safetensors"),
    purpose="table structure, table_mode=accurate (without it tables lose their cells)",
    required=False,
)
# docling's RapidOCR stage resolves these names for backend onnxruntime, the
# default language and model size "small" (PP-OCRv6 det/rec, PP-OCRv4 cls).
RAPIDOCR_FILES = (
    "PP-OCRv6_det_small.onnx",
    "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    "PP-OCRv6_rec_small.onnx",
)
RAPIDOCR = Artifact(
    key="rapidocr",
    folder="RapidOcr",
    files=RAPIDOCR_FILES,
    purpose="OCR (RapidOCR, ONNX): ocr=force, and ocr=auto on pages without a text layer",
    required=False,
)
ARTIFACTS: tuple[Artifact, ...] = (LAYOUT, TABLEFORMER_FAST, TABLEFORMER_ACCURATE, RAPIDOCR)


def required_artifacts() -> dict[str, list[str]]:
    """Route → the artifact folders (relative to ``models_dir``) it uses."""
    return {PDF_MD_ROUTE: [a.folder for a in ARTIFACTS]}


def missing_files(models_dir: Path | None, artifact: Artifact) -> list[str]:
    """The patterns of ``artifact`` with no matching file (all of them when no folder)."""
    if models_dir is None:
        return list(artifact.files)
    folder = models_dir / artifact.folder
    if not folder.is_dir():
        return list(artifact.files)
    return [p for p in artifact.files if not any(f.is_file() for f in folder.glob(p))]


class ArtifactStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    folder: str
    path: str | None
    purpose: str
    required: bool
    present: bool
    missing_files: list[str]


class ModelsReport(BaseModel):
    """What is present under ``models_dir``, and which routes can run."""

    model_config = ConfigDict(frozen=True)

    models_dir: str | None
    artifacts: list[ArtifactStatus]
    routes: dict[str, bool]

    @property
    def ready(self) -> bool:
        return all(self.routes.values())

    def status(self, key: str) -> ArtifactStatus:
        return next(a for a in self.artifacts if a.key == key)

    def lines(self) -> list[str]:
        """Human-readable report, one line per artifact and per route."""
        out = [f"models_dir: {self.models_dir or '(not set)'}"]
        for a in self.artifacts:
            mark = "ok     " if a.present else "MISSING"
            need = "required" if a.required else "optional"
            line = f"  {mark} {a.folder}  [{need}] {a.purpose}"
            if not a.present and a.missing_files != [] and self.models_dir is not None:
                line += f" (missing: {', '.join(a.missing_files)})"
            out.append(line)
        for route, ok in sorted(self.routes.items()):
            out.append(f"route {route}: {'ready' if ok else 'NOT READY'}")
        return out


def check_models(models_dir: Path | None) -> ModelsReport:
    statuses: list[ArtifactStatus] = []
    for artifact in ARTIFACTS:
        missing = missing_files(models_dir, artifact)
        statuses.append(
            ArtifactStatus(
                key=artifact.key,
                folder=artifact.folder,
                path=str(models_dir / artifact.folder) if models_dir is not None else None,
                purpose=artifact.purpose,
                required=artifact.required,
                present=not missing,
                missing_files=missing,
            )
        )
    ready = all(s.present for s in statuses if s.required)
    return ModelsReport(
        models_dir=str(models_dir) if models_dir is not None else None,
        artifacts=statuses,
        routes={PDF_MD_ROUTE: ready},
    )


_NETWORK_HINTS = (
    "Connection",
    "Offline",
    "LocalEntryNotFound",
    "Timeout",
    "HTTPError",
    "NameResolution",
    "MaxRetry",
    "SSLError",
)


def _looks_like_network(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        names = [c.__name__ for c in type(seen).__mro__]
        if any(hint in name for hint in _NETWORK_HINTS for name in names):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def fetch_models(
    models_dir: Path, *, with_ocr: bool = True, progress: bool = False
) -> ModelsReport:
    """Download the artifacts with docling's own downloader, then check them.

    Needs internet access (huggingface.co for layout and TableFormer,
    modelscope.cn for RapidOCR). Raises :class:`DependencyMissing` when docling
    is not installed or the hosts cannot be reached, :class:`ConverterFailed`
    for any other download failure. Returns the report of a fresh check; the
    caller decides what a route that is still not ready means.
    """
    try:
        from docling.utils.model_downloader import download_models
    except ImportError as exc:
        raise DependencyMissing(
            f"docling is not installed, cannot fetch models ({exc})", error=repr(exc)
        ) from None
    models_dir.mkdir(parents=True, exist_ok=True)
    try:
        download_models(
            output_dir=models_dir,
            progress=progress,
            with_layout=True,
            with_tableformer=True,
            with_code_formula=False,
            with_picture_classifier=False,
            with_rapidocr=with_ocr,
            rapidocr_models=["onnxruntime:ch"] if with_ocr else None,
        )
    except Exception as exc:
        hint = (
            "Fetching needs internet access to huggingface.co (layout, TableFormer) and "
            "modelscope.cn (RapidOCR). On an offline host, run `sir-convert-a-lot models "
            "fetch` on a connected machine and copy the folder over."
        )
        if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
            hint += " HF_HUB_OFFLINE is set in this environment, which blocks the download."
        message = f"downloading models into {models_dir} failed: {type(exc).__name__}: {exc}"
        cls = DependencyMissing if _looks_like_network(exc) else ConverterFailed
        raise cls(f"{message[:1500].rstrip('. ')}. {hint}", error=repr(exc)[:2000]) from None
    return check_models(models_dir)
