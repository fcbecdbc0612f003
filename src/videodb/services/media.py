"""What ffprobe says of an upload (duration, size, codecs) and its poster (ffmpeg, one frame).

Both read the staged bytes where they are: a file, or the S3 object through a short-lived
presigned URL (ffmpeg reads HTTP with ranges), so nothing is copied first.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from videodb.services.storage import StorageError

PROBE_TIMEOUT_S = 60.0
POSTER_WIDTH = 480


@dataclass(frozen=True)
class MediaInfo:
    duration_s: float | None
    width: int
    height: int
    video_codec: str
    audio_codec: str | None
    has_poster: bool = False  # set once the poster is stored


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def probe(source: str) -> MediaInfo:
    """ffprobe's view of the file; StorageError 415 when it is not a playable video."""
    try:
        done = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-print_format",
                "json",
                "-show_format",
                "-show_streams",
                source,
            ],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StorageError(
            f"ffprobe did not finish reading the file within {PROBE_TIMEOUT_S:g} s; upload a "
            "complete MP4, WebM, Ogg or QuickTime video",
            415,
        ) from None
    if done.returncode != 0:
        said = _first_line(done.stderr.replace(source, "the upload"))
        raise StorageError(
            f"the file cannot be read as a video (ffprobe: {said}); upload "
            "a complete MP4, WebM, Ogg or QuickTime video",
            415,
        )
    found = json.loads(done.stdout or "{}")
    streams = found.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    if video is None or not video.get("width"):
        raise StorageError(
            "the file has no video stream (ffprobe found "
            f"{', '.join(str(s.get('codec_type')) for s in streams) or 'no stream'}); upload a "
            "video",
            415,
        )
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    raw = found.get("format", {}).get("duration") or video.get("duration")
    try:
        duration = float(raw) if raw is not None else None
    except ValueError:
        duration = None
    return MediaInfo(
        duration_s=duration,
        width=int(video["width"]),
        height=int(video["height"]),
        video_codec=str(video.get("codec_name", "unknown")),
        audio_codec=str(audio.get("codec_name")) if audio else None,
    )


def poster(source: str, info: MediaInfo) -> bytes | None:
    """One frame (a second in, or the middle of a shorter video) as a JPEG; None if ffmpeg
    cannot make one (the video is kept: the page shows a placeholder)."""
    at = min(1.0, (info.duration_s or 0.0) / 2)
    try:
        done = subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-ss",
                f"{at:.3f}",
                "-i",
                source,
                "-frames:v",
                "1",
                "-vf",
                f"scale='min({POSTER_WIDTH},iw)':-2",
                "-f",
                "image2",
                "-c:v",
                "mjpeg",
                "pipe:1",
            ],
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0 or not done.stdout.startswith(b"\xff\xd8"):
        return None
    return done.stdout
