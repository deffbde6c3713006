"""What one docling conversion publishes: Markdown (with figures and pages), JSON, chunks.

Every docling → md route converts once and derives all its outputs from that one
``DoclingDocument``; nothing here runs a model again.

* **Figures** (``options.images``): ``placeholder`` writes docling's
  ``<!-- image -->``; ``referenced`` writes each picture's crop as a PNG file into
  the ``images`` companion folder (``<stem>.images/figure-001.png``…) and links it
  relatively; ``embedded`` inlines it as a ``data:`` URI. Pictures past
  ``max_images``, or with more pixels than ``max_image_pixels``, stay
  placeholders and the job carries warning ``images_limited``.
* **Pages**: with ``page_markers`` each page's content follows a line
  ``<!-- page N -->``; with ``pages`` only the chosen pages are written (the
  JSON and the chunks hold those pages too).
* **Structure** (``options.also``): ``json`` writes the DoclingDocument as
  docling-core serialises it (pictures embedded as data URIs, loadable with
  ``DoclingDocument.load_from_json``); ``chunks`` writes one JSON object a line
  from docling-core's ``HierarchicalChunker`` (no tokenizer, nothing fetched).

Nothing here imports docling at module level: the daemon imports
``relink_figures`` for publishing.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converters.base import ConversionRequest, ConvertOptions, Route
from converters.errors import ConverterFailed, OptionsInvalid, SirError
from converters.markdown import normalize_markdown, separate_tables
from converters.warning_codes import WarningCode

if TYPE_CHECKING:
    from docling_core.types.doc.document import DoclingDocument

__all__ = [
    "FIGURE_NAME",
    "PAGE_MARKER",
    "chosen_pages",
    "ignored_options",
    "relink_figures",
    "write_outputs",
]

FIGURE_NAME = "figure-{:03d}.png"
PAGE_MARKER = "<!-- page {} -->"
PLACEHOLDER = "<!-- image -->"
# docling-core's note for a picture without pixels in embedded mode (an HTML
# <img> never fetched, a picture over the limits): the same placeholder as elsewhere.
_NOT_AVAILABLE = re.compile(r"<!-- [^\n]{0,8}Image not available\.[^\n]*?-->")


def _href(folder: str) -> str:
    """A folder name as the start of a relative Markdown link (spaces, brackets quoted)."""
    return urllib.parse.quote(folder, safe="")


def relink_figures(markdown: str, old_folder: str, new_folder: str) -> str:
    """Point the figure links of ``markdown`` at ``new_folder`` (the published name)."""
    return markdown.replace(f"]({_href(old_folder)}/", f"]({_href(new_folder)}/")


def ignored_options(route: Route, options: ConvertOptions) -> list[str]:
    """The output options set away from their defaults that ``route`` cannot honour.

    Every → md route is a docling route (figures, page markers, ``also``);
    only pdf → md knows pages to choose; only → pdf routes write a PDF variant.
    """
    defaults = ConvertOptions()
    to_md = route.target == "md"
    ignored = {
        "images": not to_md and options.images != defaults.images,
        "page_markers": not to_md and options.page_markers,
        "also": not to_md and bool(options.also),
        "pages": route != Route("pdf", "md") and options.pages is not None,
        "pdf_variant": route.target != "pdf" and options.pdf_variant is not None,
    }
    return sorted(name for name, hit in ignored.items() if hit)


def chosen_pages(page_count: int, spec: list[tuple[int, int]] | None) -> list[int]:
    """The pages to convert, 1-based; OptionsInvalid for a range outside the document."""
    if spec is None:
        return list(range(1, page_count + 1))
    last = spec[-1][1]
    if last > page_count:
        shown = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in spec)
        raise OptionsInvalid(
            f"pages = {shown!r} asks for page {last}, the document has {page_count}",
            pages=page_count,
        )
    return [page for first, end in spec for page in range(first, end + 1)]


def write_outputs(
    document: DoclingDocument,
    request: ConversionRequest,
    *,
    pages: list[int] | None,
) -> tuple[str, list[str]]:
    """Write the Markdown and the companions the options ask for; returns the
    Markdown written and the warnings. ``pages``: the pages to keep (None: all,
    and the document has no pages, as docx or html)."""
    try:
        return _write(document, request, pages)
    except (SirError, OSError):
        raise
    except Exception as exc:
        message = f"writing the outputs failed: {type(exc).__name__}: {exc}"
        raise ConverterFailed(message[:1500]) from exc


def _write(
    document: DoclingDocument, request: ConversionRequest, pages: list[int] | None
) -> tuple[str, list[str]]:
    options = request.options
    warnings: list[str] = []
    # The Markdown is exported page by page from the whole pass; the JSON and
    # the chunks come from docling-core's copy restricted to the chosen pages.
    kept = document
    if pages is not None and set(pages) != set(document.pages):
        kept = _renumbered(document.filter(page_nrs=set(pages)), sorted(pages))
    if "json" in options.also:
        _write_json(kept, request.companions["json"])
    if "chunks" in options.also:
        _write_chunks(kept, request.companions["chunks"])
    warnings.extend(_prepare_figures(document, request))
    markdown = _markdown(document, request, pages)
    text = normalize_markdown(markdown) if options.normalize_markdown else markdown
    request.output_path.write_bytes(text.encode("utf-8"))
    return text, warnings


def _renumbered(document: DoclingDocument, pages: list[int]) -> DoclingDocument:
    """docling-core's filter counts the kept pages from 1 (the first page of the
    pass is 1, gaps kept); give them their own numbers back."""
    if not document.pages or set(document.pages) == set(pages):
        return document
    shift = pages[0] - min(document.pages)
    number = {key: key + shift for key in document.pages}
    document.pages = {
        number.get(key, key): page.model_copy(update={"page_no": number.get(key, key)})
        for key, page in document.pages.items()
    }
    items: list[Any] = [
        *document.texts,
        *document.pictures,
        *document.tables,
        *document.key_value_items,
        *document.form_items,
    ]
    for item in items:
        for prov in item.prov:
            prov.page_no = number.get(prov.page_no, prov.page_no)
    return document


def _write_json(document: DoclingDocument, path: Path) -> None:
    from docling_core.types.doc.base import ImageRefMode

    # PLACEHOLDER keeps the pictures as the pipeline stored them (data: URIs).
    document.save_as_json(path, image_mode=ImageRefMode.PLACEHOLDER)


def _box(item: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for prov in getattr(item, "prov", None) or []:
        box = prov.bbox
        out.append(
            {
                "page": prov.page_no,
                "l": round(box.l, 2),
                "t": round(box.t, 2),
                "r": round(box.r, 2),
                "b": round(box.b, 2),
                "coord_origin": str(box.coord_origin.value),
            }
        )
    return out


def _write_chunks(document: DoclingDocument, path: Path) -> None:
    from docling_core.transforms.chunker.hierarchical_chunker import HierarchicalChunker

    with path.open("w", encoding="utf-8") as out:
        for number, chunk in enumerate(HierarchicalChunker().chunk(document)):
            meta: Any = chunk.meta
            boxes = [box for item in meta.doc_items for box in _box(item)]
            line = {
                "index": number,
                "text": chunk.text,
                "headings": list(meta.headings or []),
                "pages": sorted({box["page"] for box in boxes}),
                "boxes": boxes,
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


def _prepare_figures(document: DoclingDocument, request: ConversionRequest) -> list[str]:
    """Apply the limits; for ``referenced`` write the crops and point each picture at its file."""
    from docling_core.types.doc.common.reference import ImageRef
    from docling_core.types.doc.items.picture.picture import PictureItem

    options = request.options
    if options.images == "placeholder":
        return []
    limited = False
    kept = 0
    folder = request.companions.get("images")
    for item, _level in document.iterate_items(with_groups=False, traverse_pictures=False):
        if not isinstance(item, PictureItem) or item.image is None:
            continue
        image = item.get_image(document)
        if image is None:
            continue
        if kept >= options.max_images or image.width * image.height > options.max_image_pixels:
            item.image = None
            limited = True
            continue
        kept += 1
        if options.images == "referenced":
            if folder is None:
                raise ConverterFailed("images = referenced, but the request names no images folder")
            folder.mkdir(exist_ok=True)
            name = FIGURE_NAME.format(kept)
            image.save(folder / name, format="PNG")
            ref = ImageRef.from_pil(image, dpi=item.image.dpi)
            ref.uri = Path(f"{_href(folder.name)}/{name}")
            item.image = ref
    return [WarningCode.IMAGES_LIMITED] if limited else []


def _markdown(
    document: DoclingDocument, request: ConversionRequest, pages: list[int] | None
) -> str:
    from docling_core.types.doc.base import ImageRefMode

    options = request.options
    mode = ImageRefMode(options.images)

    def export(page_no: int | None = None) -> str:
        text = document.export_to_markdown(image_mode=mode, page_no=page_no)
        return separate_tables(_NOT_AVAILABLE.sub(PLACEHOLDER, str(text)))

    if not options.page_markers and pages is None:
        return export()
    numbers = pages if pages is not None else sorted(document.pages)
    if not numbers:
        return export()
    parts: list[str] = []
    for page in numbers:
        if options.page_markers:
            parts.append(PAGE_MARKER.format(page))
        parts.append(export(page))
    return "\n\n".join(parts) + "\n"
