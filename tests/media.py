"""Real small videos for the tests, made with ffmpeg (Debian's package)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CODECS = {
    "mp4": ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "+faststart"],
    "webm": ["-c:v", "libvpx", "-b:v", "300k", "-c:a", "libvorbis"],
}


def ffmpeg(path: Path, *arguments: str) -> Path:
    """Run ffmpeg quietly to make `path`."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError(
            "ffmpeg not found: the tests make real videos with it; 'platform.sh' installs it as "
            "root, or: apt-get install -y ffmpeg"
        )
    argv = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *arguments, str(path)]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    return path


def make_video(path: Path, seconds: float = 2.0, size: str = "320x240") -> Path:
    """A test pattern with a tone, in the container `path`'s suffix names (.mp4 or .webm)."""
    pattern = f"testsrc=duration={seconds}:size={size}:rate=25"
    tone = f"sine=frequency=440:duration={seconds}"
    codecs = CODECS[path.suffix.lstrip(".")]
    return ffmpeg(
        path, "-f", "lavfi", "-i", pattern, "-f", "lavfi", "-i", tone, *codecs, "-shortest"
    )


def make_noise_video(path: Path, seconds: float) -> Path:
    """An MP4 of random noise: incompressible, about 5.8 MB a second (big uploads, long
    streams)."""
    noise = f"nullsrc=size=640x360:rate=25:duration={seconds},noise=alls=100:allf=t+u"
    x264 = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "10", "-pix_fmt", "yuv420p"]
    return ffmpeg(path, "-f", "lavfi", "-i", noise, *x264, "-movflags", "+faststart")
