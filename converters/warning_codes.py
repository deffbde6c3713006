"""Every warning code a sidecar can carry, defined once.

A warning means the job succeeded but the output is not everything the input
asked for. The codes are stable (automation matches on them); each member's
meaning is in ``MEANINGS`` and in docs/sidecar.md, which a test keeps in step.
"""

from __future__ import annotations

import enum

__all__ = ["MEANINGS", "WarningCode"]


class WarningCode(enum.StrEnum):
    """A stable warning code (a ``str``: JSON, metrics and sidecars take it as is)."""

    # resources a document references (md/html → pdf, md/html → docx)
    LOCAL_RESOURCE_BLOCKED = "local_resource_blocked"
    REMOTE_RESOURCE_BLOCKED = "remote_resource_blocked"
    RESOURCE_MISSING = "resource_missing"
    RESOURCE_TOO_LARGE = "resource_too_large"
    DATA_URL_TOO_LARGE = "data_url_too_large"
    IMAGE_TOO_LARGE = "image_too_large"
    # what came out
    EMPTY_OUTPUT = "empty_output"
    PARTIAL_CONVERSION = "partial_conversion"
    PDF_PAGES_SKIPPED = "pdf_pages_skipped"
    IMAGES_LIMITED = "images_limited"
    OPTION_IGNORED = "option_ignored"
    PDF_CONVERTED_PAGE_BY_PAGE = "pdf_converted_page_by_page"
    # how pdf → md ran
    OCR_APPLIED = "ocr_applied"
    TABLE_MODEL_MISSING = "table_model_missing"
    GPU_UNAVAILABLE_RAN_ON_CPU = "gpu_unavailable_ran_on_cpu"
    # publishing
    OUTPUT_NAME_COLLISION = "output_name_collision"


MEANINGS: dict[WarningCode, str] = {
    WarningCode.LOCAL_RESOURCE_BLOCKED: (
        "a file the document references was not loaded: outside the drop folder, "
        "reached through a symbolic link, hard-linked, or not a regular file"
    ),
    WarningCode.REMOTE_RESOURCE_BLOCKED: "a network URL the document references was not fetched",
    WarningCode.RESOURCE_MISSING: "a file the document references is not in the drop folder",
    WarningCode.RESOURCE_TOO_LARGE: "a referenced file is larger than limits.max_input_bytes",
    WarningCode.DATA_URL_TOO_LARGE: "a data: URL is longer than limits.max_data_url_bytes",
    WarningCode.IMAGE_TOO_LARGE: "a raster image has more pixels than limits.max_pixels",
    WarningCode.EMPTY_OUTPUT: "the output holds no text and no picture",
    WarningCode.PARTIAL_CONVERSION: "docling converted the document only in part",
    WarningCode.PDF_PAGES_SKIPPED: "pdf2docx skipped pages it could not convert",
    WarningCode.IMAGES_LIMITED: (
        "pictures past max_images, or larger than max_image_pixels, are placeholders"
    ),
    WarningCode.OPTION_IGNORED: (
        "an option the folder set does not apply to this route (pages on a docx, "
        "pdf_variant on a Markdown output…) and was ignored"
    ),
    WarningCode.PDF_CONVERTED_PAGE_BY_PAGE: (
        "pdf2docx failed on the whole document, so each page was converted on its own "
        "(no headers, footers or sections detected across pages)"
    ),
    WarningCode.OCR_APPLIED: "pdf → md ran full-page OCR (forced, or too little text layer)",
    WarningCode.TABLE_MODEL_MISSING: "the TableFormer model is missing: tables are plain text",
    WarningCode.GPU_UNAVAILABLE_RAN_ON_CPU: "gpu_policy preferred, no usable GPU: ran on the CPU",
    WarningCode.OUTPUT_NAME_COLLISION: "the output name was taken: the result got a ~N name",
}
