"""WeasyPrint plumbing shared by md→pdf and html→pdf.

The render helper wires ``converters.resource_policy.ResourcePolicy`` (what a
document may load: its drop folder only, no network, size and pixel caps) into
WeasyPrint as its URL fetcher. WeasyPrint never sees a real path: the document
is rendered from text we read ourselves, with the synthetic base URL
``DROP_BASE_URL``. A refused resource makes WeasyPrint skip it; the conversion
still succeeds and the warning codes land in ``ConversionResult.warnings``.
"""

from __future__ import annotations

import functools
import io
from importlib import resources
from pathlib import Path
from typing import Any

from converters.base import (
    ConversionRequest,
    ConversionResult,
    Limits,
    WorkerContext,
    package_versions,
)
from converters.errors import (
    ConverterFailed,
    DependencyMissing,
    OptionsInvalid,
    SirError,
    TooManyPages,
)
from converters.output_check import pdf_has_content
from converters.resource_policy import DROP_BASE_URL, ResourcePolicy
from converters.warning_codes import WarningCode

__all__ = [
    "default_stylesheet_text",
    "render_pdf",
    "warm_weasyprint",
    "weasyprint_problems",
    "weasyprint_version",
]


@functools.cache
def _fetcher_class() -> type[Any]:
    """A WeasyPrint ``URLFetcher`` whose every load goes through a ResourcePolicy."""
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    class _BytesResponse(URLFetcherResponse):  # type: ignore[misc]
        # ``path`` lets WeasyPrint re-read a file lazily by name; we hand over
        # the bytes we checked instead.
        @property
        def path(self) -> None:
            return None

    class ConfinedFetcher(URLFetcher):  # type: ignore[misc]
        def __init__(self, policy: ResourcePolicy) -> None:
            super().__init__(timeout=1, allow_redirects=False, fail_on_errors=False)
            self.policy = policy

        def fetch(self, url: str, headers: object = None) -> Any:
            body, mime, final_url = self.policy.load(url)
            return _BytesResponse(final_url, body, {"Content-Type": mime})

    return ConfinedFetcher


def default_stylesheet_text() -> str:
    """The packaged print stylesheet (``converters/print.css``)."""
    return resources.files("converters").joinpath("print.css").read_text(encoding="utf-8")


def weasyprint_version() -> str:
    return package_versions(["weasyprint"])["weasyprint"]


def weasyprint_problems() -> list[SirError]:
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: Pango/HarfBuzz libraries missing
        return [DependencyMissing(f"weasyprint unavailable: {exc}")]
    return []


def _import_weasyprint() -> Any:
    try:
        import weasyprint
    except (ImportError, OSError) as exc:
        raise DependencyMissing(f"weasyprint cannot be imported: {exc}") from None
    return weasyprint


def _stylesheet(sheet: Path, limits: Limits) -> bytes:
    """The profile's or folder's stylesheet: a copy the daemon made in its job
    folder (trusted), read with a plain open. Its ``url()``s resolve against the
    drop folder like the document's."""
    try:
        with sheet.open("rb") as handle:
            data = handle.read(limits.max_input_bytes + 1)
    except OSError:
        raise OptionsInvalid(f"stylesheet {sheet} does not exist", stylesheet=str(sheet)) from None
    if len(data) > limits.max_input_bytes:
        raise OptionsInvalid(f"stylesheet {sheet} is too large", stylesheet=str(sheet))
    return data


def render_pdf(
    request: ConversionRequest,
    ctx: WorkerContext,
    *,
    html_string: str,
    default_stylesheet: bool = False,
) -> ConversionResult:
    """Render ``html_string`` to the output PDF.

    The HTML is text the route read itself (WeasyPrint never opens the input by
    name); relative references resolve against the pinned drop folder through
    ``DROP_BASE_URL``. The stylesheet is ``options.stylesheet`` when set, else
    the packaged print.css when ``default_stylesheet`` is true. More than
    ``limits.max_pages`` rendered pages raise TooManyPages and no output is
    written. A PDF without any text or picture carries ``empty_output``.
    ``options.pdf_variant`` (``pdf/a-3b``…) makes WeasyPrint write that variant's
    metadata and structure; nothing validates it externally.
    """
    weasyprint = _import_weasyprint()
    from weasyprint.text.fonts import FontConfiguration

    policy = ResourcePolicy(request.drop_folder, ctx.limits)
    fetcher = _fetcher_class()(policy)
    fonts = FontConfiguration()
    stylesheets: list[Any] = []
    sheet = request.options.stylesheet
    try:
        if sheet is not None:
            stylesheets.append(
                weasyprint.CSS(
                    file_obj=io.BytesIO(_stylesheet(sheet, ctx.limits)),
                    base_url=DROP_BASE_URL,
                    url_fetcher=fetcher,
                    font_config=fonts,
                )
            )
        elif default_stylesheet:
            stylesheets.append(
                weasyprint.CSS(
                    string=default_stylesheet_text(), url_fetcher=fetcher, font_config=fonts
                )
            )
        html = weasyprint.HTML(string=html_string, base_url=DROP_BASE_URL, url_fetcher=fetcher)
        document = html.render(stylesheets=stylesheets, font_config=fonts)
        pages = len(document.pages)
        if pages > ctx.limits.max_pages:
            raise TooManyPages(
                f"the rendered document has {pages} pages, the limit is {ctx.limits.max_pages}",
                pages=pages,
                limit=ctx.limits.max_pages,
            )
        variant = request.options.pdf_variant
        if variant is None:
            document.write_pdf(target=str(request.output_path))
        else:
            document.write_pdf(target=str(request.output_path), pdf_variant=variant)
    except SirError:
        raise
    except RecursionError:
        raise ConverterFailed("the document is nested too deeply to lay out") from None
    except Exception as exc:
        raise ConverterFailed(f"weasyprint failed: {type(exc).__name__}: {exc}") from exc
    found = list(policy.warnings)
    if not pdf_has_content(request.output_path):
        found.append(WarningCode.EMPTY_OUTPUT)
    return ConversionResult(
        warnings=found, pages=pages, device="cpu", pdf_variant=request.options.pdf_variant
    )


def warm_weasyprint() -> None:
    """Import WeasyPrint and render a tiny page once, so the first job is fast."""
    weasyprint = _import_weasyprint()
    from weasyprint.text.fonts import FontConfiguration

    fonts = FontConfiguration()
    css = weasyprint.CSS(string=default_stylesheet_text(), font_config=fonts)
    html = weasyprint.HTML(
        string="<!doctype html><title>warm</title><h1>Warm</h1><p>up <code>x</code></p>"
    )
    html.write_pdf(target=io.BytesIO(), stylesheets=[css], font_config=fonts)
