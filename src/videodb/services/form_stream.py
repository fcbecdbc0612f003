"""A multipart/form-data body parsed as it arrives: the file part streams into the content store,
the other fields are collected (and bounded). Nothing is spooled elsewhere first."""

from __future__ import annotations

from python_multipart.multipart import MultipartParser, parse_options_header

from videodb.services.storage import PendingUpload, StorageError, VideoStore

FILE_FIELD = "file"
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 20


class FormError(StorageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 400)


def boundary_of(content_type: str | None) -> bytes:
    if not content_type:
        raise FormError("no Content-Type: send multipart/form-data with a 'file' field")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise StorageError(
            f"Content-Type {content_type!r}: send multipart/form-data with a 'file' field "
            "(e.g. curl -F file=@clip.mp4 -F title=...)",
            415,
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise FormError("multipart/form-data without a boundary parameter")
    return boundary


class FormStream:
    """Feed it the body's chunks; afterwards `fields` and `pending` (the file, unchecked yet)."""

    def __init__(self, store: VideoStore, content_type: str | None) -> None:
        self.store = store
        self.fields: dict[str, str] = {}
        self.pending: PendingUpload | None = None
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self._ended = False
        self._error: StorageError | None = None
        self._parser = MultipartParser(
            boundary_of(content_type),
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field_cb,
                "on_header_value": self._header_value_cb,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    # parser callbacks: errors are kept and raised from feed(), outside the parser
    def _part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._is_file = False
        self._value = bytearray()

    def _header_field_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = b""
        self._header_value = b""

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise FormError("a multipart part without Content-Disposition: form-data; name=...")
        self._name = name.decode("utf-8", "replace")
        if self._name == FILE_FIELD:
            if self.pending is not None:
                raise FormError("more than one 'file' part: upload one video per request")
            if b"filename" not in options:
                raise FormError("the 'file' part is not a file (no filename)")
            declared = self._headers.get(b"content-type", b"").decode("latin-1").strip() or None
            self.pending = self.store.begin(declared)
            self._is_file = True
        elif len(self.fields) >= MAX_FIELDS:
            raise FormError(f"more than {MAX_FIELDS} form fields")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            assert self.pending is not None
            self.pending.write(memoryview(data)[start:end])  # no copy of the chunk
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise FormError(f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if not self._is_file and self._name is not None:
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    def _end(self) -> None:
        self._ended = True

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except StorageError:
            raise
        except Exception as exc:  # python-multipart raises its own errors on a malformed body
            raise FormError(f"malformed multipart body: {exc}") from exc

    def close(self) -> PendingUpload:
        """The body is complete: returns the file part (still to be finished and published)."""
        self._parser.finalize()
        if not self._ended:
            raise FormError("the multipart body ended early (no closing boundary)")
        if self.pending is None:
            raise FormError("no 'file' part: attach the video as the form field 'file'")
        return self.pending

    def discard(self) -> None:
        if self.pending is not None:
            self.pending.discard()
