"""python-multipart (written against 0.0.34): one uploaded file read from a multipart body with the parser's
callbacks, without Starlette's form objects. tests/services/test_compat.py holds it to what Starlette's own form
parser reads from the same bodies.
"""

from __future__ import annotations

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from services.errors import BadRequest


def uploaded_file(
    body: bytes, content_type: str, field: str, text_fields: tuple[str, ...] = ()
) -> tuple[bytes, dict[str, str]]:
    """The one file of a multipart/form-data body, under `field`, and the text fields among `text_fields` it holds
    (each at most once): parsed by python-multipart as Starlette's form parser would, without its spooled temporary
    files and form objects (what that saves: docs/benchmarks.md)."""
    _, options = parse_options_header(content_type)
    if not options.get(b"boundary"):
        raise BadRequest("the multipart Content-Type names no boundary")
    parts: list[tuple[str, bool, bytes]] = []  # (field name, a file?, content)
    name: list[bytes] = []
    headers: dict[bytes, bytes] = {}
    data: list[bytes] = []

    def on_header_field(chunk: bytes, start: int, end: int) -> None:
        name.append(chunk[start:end])

    def on_header_value(chunk: bytes, start: int, end: int) -> None:
        key = b"".join(name).lower()
        headers[key] = headers.get(key, b"") + chunk[start:end]

    def on_part_end() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        named = disposition.get(b"name", b"").decode("utf-8", "replace")
        parts.append((named, b"filename" in disposition, b"".join(data)))
        headers.clear(), data.clear()

    parser = MultipartParser(
        options[b"boundary"],
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": name.clear,
            "on_part_data": lambda chunk, start, end: data.append(chunk[start:end]),
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"the multipart body cannot be read: {exc}") from None
    files = [content for named, is_file, content in parts if is_file and named == field]
    texts = {named: content for named, is_file, content in parts if not is_file and named in text_fields}
    if len(files) != 1 or len(files) + len(texts) != len(parts):
        fields = sorted(named for named, _, _ in parts)
        allowed = "".join(f", and optionally '{option}' (text)" for option in text_fields)
        raise BadRequest(f"multipart fields {fields} do not match the expected ['{field}'] (one file){allowed}")
    try:
        return files[0], {named: content.decode() for named, content in texts.items()}
    except UnicodeDecodeError:
        raise BadRequest(f"the multipart fields {sorted(texts)} must be UTF-8 text") from None
