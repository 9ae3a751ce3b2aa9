"""Real video: probe a file, find its hard cuts, score what is on screen, make thumbnails.

Needs the ``video`` extra (PyAV and numpy: ``pip install -e '.[video]'``). Everything here
is blocking and CPU-bound; :mod:`jobkit.handlers.cut_analysis` runs it in a worker thread
(PyAV releases the GIL while it demuxes, decodes and scales, so the event loop keeps
serving). Also :func:`make_test_video`: synthetic videos with known cuts, for demos and tests.

The detector (measured on synthetic cuts: frame-exact, no false cut from a flash):

* every frame is scaled to 160 px wide by ONE reused ``VideoReformatter``;
* the change score between consecutive frames is the mean of an RGB-histogram difference
  and a brightness difference, both in [0, 1];
* frame ``t`` starts a new shot when its score is >= 0.25 AND >= 3x the mean score of the
  quieter side (the 4 frames before, or the 4 after);
* a single-frame flash (frame ``t+1`` looks like ``t-1`` again) is not a cut, nor is the
  return from it; cuts closer than 0.4 s keep the stronger one.

``visual_score`` of a clip is the mean of four terms in [0, 1], each from the frames inside
it: sharpness (Laplacian variance L -> L/(L+200)), RMS contrast (sigma -> min(1, sigma/0.25)),
colourfulness (Hasler-Suesstrunk M -> min(1, M/110)) and motion (mean frame difference
m -> m/(m+0.02)). Flat grey scores 0; a sharp, colourful, moving shot about 0.7.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from .errors import PermanentError

if TYPE_CHECKING:
    import numpy as np

ANALYSIS_WIDTH = 160
CUT_MIN_SCORE = 0.25
CUT_RATIO = 3.0
CUT_WINDOW = 4
CUT_MIN_GAP_S = 0.4
HIST_BINS = 16
THUMBS_PER_SECOND = 2.0
CLIP_MAX_MS = 20_000
CLIP_MIN_MS = 1_000

ProgressFn = Callable[[float, str], Any]


class VideoError(PermanentError):
    """A file that cannot be analysed as a video: what is wrong with it, and what to do."""


def _require() -> Any:
    try:
        import av
        import numpy  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            f"real video analysis needs the 'video' extra ({exc.name} is missing): "
            "pip install -e '.[video]' (from the jobkit checkout)") from exc
    return av


# ---------------------------------------------------------------------------
# Probe
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoInfo:
    """What a file's header says about its first video stream."""

    path: str
    duration_ms: int
    width: int
    height: int
    fps: float
    codec: str
    size_bytes: int

    def __repr__(self) -> str:
        return (f"<VideoInfo {os.path.basename(self.path)!r} {self.width}x{self.height} "
                f"{self.fps:g} fps {self.duration_ms} ms {self.codec}>")


@dataclass(frozen=True)
class Limits:
    """The largest stream jobkit will analyse (from the ``video_max_*`` settings)."""

    max_width: int = 3840
    max_height: int = 2160
    max_seconds: float = 4 * 3600.0


def _open(path: str) -> Any:
    av = _require()
    if not os.path.exists(path):
        raise VideoError(f"the video file {path} is missing; it was recorded when the video "
                         "was uploaded but is no longer there: upload the video again")
    if not os.path.isfile(path):
        raise VideoError(f"{path} is not a regular file; upload a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path} is empty (0 bytes); upload the complete video file")
    try:
        return av.open(path, metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise VideoError(
            f"{os.path.basename(path)} cannot be read as a video ({_ffmpeg_msg(exc)}): it is "
            "not a video file, or it is truncated before its index (an MP4 cut short); "
            "upload the complete video file") from None


def _ffmpeg_msg(exc: BaseException) -> str:
    msg = getattr(exc, "strerror", None) or str(exc)
    return str(msg).strip().rstrip(".")


def _stream_info(container: Any, path: str) -> tuple[Any, VideoInfo]:
    name = os.path.basename(path)
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise VideoError(f"{name} has no video stream (it has: {', '.join(kinds)}); "
                         "upload a file with video in it")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration_s = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration_s = container.duration / 1_000_000
    elif stream.frames and fps > 0:
        duration_s = stream.frames / fps
    else:
        duration_s = 0.0
    if width <= 0 or height <= 0:
        raise VideoError(f"{name}: its video stream has no frame size ({width}x{height}); "
                         "the file is corrupt or not a video")
    info = VideoInfo(path=path, duration_ms=int(round(duration_s * 1000)), width=width,
                     height=height, fps=fps, codec=str(ctx.name),
                     size_bytes=os.path.getsize(path))
    return stream, info


def probe(path: str | os.PathLike[str], limits: Limits | None = None) -> VideoInfo:
    """Read a video file's header: duration, size, frame rate, codec.

    Raises:
        VideoError: missing, empty, not a video, audio only, zero duration, or beyond
            ``limits`` (each with a message saying which).
    """
    p = os.fspath(path)
    container = _open(p)
    try:
        _, info = _stream_info(container, p)
    finally:
        container.close()
    if info.duration_ms <= 0:
        raise VideoError(f"{os.path.basename(p)} has a zero duration (no video frames); "
                         "upload a video that lasts more than 0 ms")
    check_limits(info, limits or Limits())
    return info


def check_limits(info: VideoInfo, limits: Limits) -> None:
    name = os.path.basename(info.path)
    if info.width > limits.max_width or info.height > limits.max_height:
        raise VideoError(
            f"{name} is {info.width}x{info.height}, larger than the limit of "
            f"{limits.max_width}x{limits.max_height} (JOBKIT_VIDEO_MAX_WIDTH / "
            "JOBKIT_VIDEO_MAX_HEIGHT); upload a smaller rendition or raise the limit")
    if info.duration_ms > limits.max_seconds * 1000:
        raise VideoError(
            f"{name} lasts {info.duration_ms / 1000:g} s, longer than the limit of "
            f"{limits.max_seconds:g} s (JOBKIT_VIDEO_MAX_SECONDS); split the video or raise "
            "the limit")


# ---------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------
@dataclass
class Analysis:
    """Everything one decode pass learned about a video (per-frame arrays are numpy)."""

    path: str
    fps: float
    width: int
    height: int
    frames_decoded: int
    duration_ms: int
    frame_ms: np.ndarray
    change: np.ndarray            # change score of frame t against t-1 (0 for the first)
    skip_change: np.ndarray       # change of frame t+1 against t-1 (flash test)
    sharpness: np.ndarray
    contrast: np.ndarray
    colourfulness: np.ndarray
    motion: np.ndarray
    thumbs: list[tuple[int, bytes]] = field(default_factory=list)
    cut_frames: list[int] = field(default_factory=list)

    @property
    def cuts_ms(self) -> list[int]:
        return [int(self.frame_ms[i]) for i in self.cut_frames]

    def clip_bounds(self, min_ms: int = CLIP_MIN_MS, max_ms: int = CLIP_MAX_MS
                    ) -> list[tuple[int, int]]:
        return clip_bounds_from_cuts(self.cuts_ms, self.duration_ms, min_ms, max_ms)

    def score(self, start_ms: int, end_ms: int) -> float:
        """The ``visual_score`` of the frames in [start_ms, end_ms)."""
        import numpy as np

        inside = np.nonzero((self.frame_ms >= start_ms) & (self.frame_ms < end_ms))[0]
        if inside.size == 0:
            return 0.0
        # Motion across the clip's first frame is the cut itself, not motion in the shot.
        moving = inside[1:] if inside.size > 1 else inside
        sampled = inside[~np.isnan(self.sharpness[inside])]  # every QUALITY_STEP-th frame
        if sampled.size == 0:
            sampled = inside[:1]
        return visual_score(float(np.nan_to_num(self.sharpness[sampled]).mean()),
                            float(np.nan_to_num(self.contrast[sampled]).mean()),
                            float(np.nan_to_num(self.colourfulness[sampled]).mean()),
                            float(self.motion[moving].mean()))

    def thumbnail(self, start_ms: int, end_ms: int) -> bytes | None:
        """The JPEG kept nearest the middle of [start_ms, end_ms), inside it if any is."""
        if not self.thumbs:
            return None
        middle = (start_ms + end_ms) / 2
        inside = [t for t in self.thumbs if start_ms <= t[0] < end_ms] or self.thumbs
        return min(inside, key=lambda t: (abs(t[0] - middle), t[0]))[1]

    def __repr__(self) -> str:
        return (f"<Analysis {os.path.basename(self.path)!r} {self.width}x{self.height} "
                f"{self.fps:g} fps {self.frames_decoded} frames, {len(self.cut_frames)} cuts>")


def visual_score(sharpness: float, contrast: float, colourfulness: float,
                 motion: float) -> float:
    """Mean of the four terms, each mapped into [0, 1]; rounded to 4 places."""
    terms = (sharpness / (sharpness + 200.0) if sharpness > 0 else 0.0,
             min(1.0, contrast / 0.25),
             min(1.0, colourfulness / 110.0),
             motion / (motion + 0.02) if motion > 0 else 0.0)
    return round(sum(terms) / 4, 4)


def clip_bounds_from_cuts(cuts_ms: Sequence[int], duration_ms: int,
                          min_ms: int = CLIP_MIN_MS, max_ms: int = CLIP_MAX_MS
                          ) -> list[tuple[int, int]]:
    """Clips between cuts: a piece shorter than ``min_ms`` joins its neighbour (the previous
    one, or the next for the first), a shot longer than ``max_ms`` is split into equal
    parts of at most ``max_ms``."""
    edges = [0] + [c for c in sorted(set(cuts_ms)) if 0 < c < duration_ms] + [duration_ms]
    pieces = [[a, b] for a, b in zip(edges, edges[1:], strict=False) if b > a]
    merged: list[list[int]] = []
    for piece in pieces:
        if merged and (piece[1] - piece[0] < min_ms or merged[-1][1] - merged[-1][0] < min_ms):
            merged[-1][1] = piece[1]
        else:
            merged.append(piece)
    out: list[tuple[int, int]] = []
    for a, b in merged:
        parts = max(1, math.ceil((b - a) / max_ms))
        cuts = [a + round((b - a) * k / parts) for k in range(parts + 1)]
        out.extend(zip(cuts, cuts[1:], strict=False))
    return out


BATCH = 32  # frames whose features are computed together (fewer numpy calls per frame)
QUALITY_STEP = 2  # sharpness, contrast and colourfulness from every 2nd frame


class _Features:
    """Per-frame features of a stream of small RGB frames, computed in batches.

    Batching matters for concurrency: PyAV releases the GIL while it decodes and scales,
    but each numpy call holds it for its Python overhead; one call per batch instead of
    one per frame lets two analyses use two cores.
    """

    def __init__(self) -> None:
        import numpy as np

        self.np = np
        self.change: list[float] = []
        self.skip: list[float] = []
        self.sharpness: list[float] = []
        self.contrast: list[float] = []
        self.colourfulness: list[float] = []
        self.motion: list[float] = []
        self._hist: Any = None    # the last two frames' histograms
        self._bright: Any = None  # and brightness
        self._grey: Any = None    # the last frame's grey image
        self._frames: list[np.ndarray] = []
        self._count = 0  # frames seen before this batch

    def add(self, rgb: np.ndarray) -> None:
        self._frames.append(rgb)
        if len(self._frames) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._frames:
            return
        np = self.np
        rgb = np.stack(self._frames)                       # [B, H, W, 3] uint8
        self._frames = []
        b = rgb.shape[0]
        # Histograms from every other pixel of every other row (4x cheaper, as telling),
        # with uint16 bin indexes (B * 48 < 65536).
        sub = rgb[:, ::2, ::2]
        shift = 8 - int(math.log2(HIST_BINS))
        q = (sub >> shift).astype(np.uint16)
        q += (np.arange(3) * HIST_BINS + (np.arange(b) * 3 * HIST_BINS)[:, None, None, None]
              ).astype(np.uint16)
        hist = np.bincount(q.ravel(), minlength=b * 3 * HIST_BINS).reshape(b, 3 * HIST_BINS)
        hist = hist.astype(np.float32) / (sub.shape[1] * sub.shape[2])
        f = rgb.astype(np.float32)
        grey = f @ np.array([0.299, 0.587, 0.114], np.float32)  # [B, H, W]
        bright = grey.mean(axis=(1, 2)) / 255.0
        # The quality terms (averaged over a clip) from every QUALITY_STEP-th frame.
        picked = (np.arange(self._count, self._count + b) % QUALITY_STEP) == 0
        self._count += b
        fq, gq = f[picked], grey[picked]
        lap = (4 * gq[:, 1:-1, 1:-1] - gq[:, :-2, 1:-1] - gq[:, 2:, 1:-1]
               - gq[:, 1:-1, :-2] - gq[:, 1:-1, 2:])
        r, g, bl = fq[..., 0], fq[..., 1], fq[..., 2]
        rg = r - g
        yb = 0.5 * (r + g) - bl
        sharp = np.full(b, np.nan)
        sharp[picked] = lap.var(axis=(1, 2))
        contrast = np.full(b, np.nan)
        contrast[picked] = gq.std(axis=(1, 2)) / 255.0
        colour = np.full(b, np.nan)
        colour[picked] = (np.sqrt(rg.var(axis=(1, 2)) + yb.var(axis=(1, 2)))
                          + 0.3 * np.sqrt(rg.mean(axis=(1, 2)) ** 2 + yb.mean(axis=(1, 2)) ** 2))
        greys = grey if self._grey is None else np.concatenate([self._grey[None], grey])
        moved = np.abs(greys[1:] - greys[:-1]).mean(axis=(1, 2)) / 255.0
        if self._grey is None:
            moved = np.concatenate([[0.0], moved])
        # Change scores need the frames before this batch: carry the last two.
        k = 0 if self._hist is None else len(self._hist)
        hs = hist if self._hist is None else np.concatenate([self._hist, hist])
        bs = bright if self._bright is None else np.concatenate([self._bright, bright])

        def diff(i: Any, j: Any) -> Any:
            return (np.abs(hs[i] - hs[j]).sum(axis=1) / 6.0
                    + np.abs(bs[i] - bs[j])) / 2.0

        pos = np.arange(k, k + b)
        first = pos == 0
        change = diff(np.maximum(pos - 1, 0), pos)
        change[first] = 0.0
        late = pos[pos >= 2]                          # frame q-1's skip: q-2 against q
        self.change.extend(change.tolist())
        self.skip.extend(diff(late - 2, late).tolist())
        self.sharpness.extend(sharp.tolist())
        self.contrast.extend(contrast.tolist())
        self.colourfulness.extend(colour.tolist())
        self.motion.extend(moved.tolist())
        self._hist, self._bright, self._grey = hs[-2:], bs[-2:], grey[-1]


def analyse(path: str | os.PathLike[str], *, limits: Limits | None = None,
            on_progress: ProgressFn | None = None, progress_every: float = 1.0,
            thumbnails: bool = True) -> Analysis:
    """Decode a video once: change scores, cuts, per-frame quality terms, thumbnails.

    Blocking and CPU-bound: call it in a thread (``await jobkit.run_blocking(analyse, p)``).
    ``on_progress(fraction, message)`` is called about every ``progress_every`` seconds of
    video.

    Raises:
        VideoError: the file is missing, not a video, audio only, of zero duration, beyond
            ``limits``, or truncated/corrupt (decoding fails, or stops well before the
            duration the file declares).
    """
    import numpy as np
    from av.video.reformatter import VideoReformatter

    av = _require()
    p = os.fspath(path)
    name = os.path.basename(p)
    container = _open(p)
    try:
        stream, info = _stream_info(container, p)
        check_limits(info, limits or Limits())
        width = ANALYSIS_WIDTH
        height = max(2, int(round(ANALYSIS_WIDTH * info.height / info.width / 2)) * 2)
        scaler, thumb_scaler = VideoReformatter(), VideoReformatter()
        jpeg = _jpeg_encoder(width, height) if thumbnails else None
        times: list[float] = []
        feats = _Features()
        thumbs: list[tuple[int, bytes]] = []
        next_thumb = 0.0
        next_report = 0.0
        declared = info.duration_ms / 1000
        t = 0.0
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(times) / (info.fps or 25)
                feats.add(scaler.reformat(frame, width=width, height=height,
                                          format="rgb24").to_ndarray())
                times.append(t)
                if jpeg is not None and t >= next_thumb:
                    small = thumb_scaler.reformat(frame, width=width, height=height,
                                                  format="yuvj420p")
                    small.pts, small.time_base = len(thumbs), jpeg.time_base
                    thumbs.append((int(round(t * 1000)), b"".join(
                        bytes(pk) for pk in jpeg.encode(small))))
                    next_thumb = t + 1 / THUMBS_PER_SECOND
                if on_progress is not None and t >= next_report:
                    on_progress(min(0.99, t / declared) if declared > 0 else 0.0,
                                f"decoding {t:.1f}/{declared:.1f} s")
                    next_report = t + progress_every
        except av.FFmpegError as exc:
            raise VideoError(
                f"{name} is corrupt: decoding failed at {t:.2f} s of {declared:.2f} s "
                f"({_ffmpeg_msg(exc)}); nothing was kept. Upload an intact copy") from None
    finally:
        container.close()
    if not times:
        raise VideoError(f"{name} has a zero duration (its video stream has no frames); "
                         "upload a video that lasts more than 0 ms")
    fps = info.fps or (len(times) / max(times[-1], 1e-9))
    end_ms = int(round((times[-1] + 1 / fps) * 1000))
    if declared > 0 and end_ms < info.duration_ms - max(500, 0.05 * info.duration_ms):
        raise VideoError(
            f"{name} is truncated or corrupt: frames decode only up to {end_ms / 1000:.2f} s "
            f"of the {declared:.2f} s the file declares; nothing was kept. Upload the "
            "complete file")
    expected = declared * info.fps if info.fps else 0.0
    if expected > 0 and len(times) < 0.9 * expected - 1:
        gaps = np.diff(np.array(times)) if len(times) > 1 else np.zeros(1)
        at = int(np.argmax(gaps)) if len(times) > 1 else 0
        raise VideoError(
            f"{name} is corrupt: only {len(times)} of about {expected:.0f} frames decode "
            f"(the largest gap is {times[at]:.2f}-{times[min(at + 1, len(times) - 1)]:.2f} s); "
            "nothing was kept. Upload an intact copy")
    feats.flush()
    change, skip = feats.change, feats.skip
    skip.append(change[-1] if len(change) > 1 else 0.0)  # the last frame has no t+1
    if len(skip) < len(times):
        skip.insert(0, 0.0)  # frame 0 has no t-1
    result = Analysis(
        path=p, fps=fps, width=info.width, height=info.height, frames_decoded=len(times),
        duration_ms=end_ms, frame_ms=np.round(np.array(times) * 1000).astype(np.int64),
        change=np.array(change), skip_change=np.array(skip[:len(times)]),
        sharpness=np.array(feats.sharpness), contrast=np.array(feats.contrast),
        colourfulness=np.array(feats.colourfulness), motion=np.array(feats.motion),
        thumbs=thumbs)
    result.cut_frames = detect_cuts(result.change, result.skip_change, fps)
    return result


def detect_cuts(change: np.ndarray, skip_change: np.ndarray, fps: float, *,
                min_score: float = CUT_MIN_SCORE, ratio: float = CUT_RATIO,
                window: int = CUT_WINDOW, min_gap_s: float = CUT_MIN_GAP_S) -> list[int]:
    """Indices of the frames that start a new shot (see the module docstring)."""
    n = len(change)
    found: list[tuple[int, float]] = []
    for t in range(1, n):
        s = float(change[t])
        if s < min_score:
            continue
        before = change[max(1, t - window):t]
        after = change[t + 1:t + 1 + window]
        sides = [float(x.mean()) for x in (before, after) if len(x)]
        if sides and s < ratio * min(sides):
            continue
        # A flash: the frame after t looks like the frame before it (t is the flash), or
        # frame t looks like t-2 (t ends a flash at t-1).
        if t + 1 < n and float(skip_change[t]) < 0.5 * s:
            continue
        if t >= 2 and float(skip_change[t - 1]) < 0.5 * s:
            continue
        found.append((t, s))
    cuts: list[tuple[int, float]] = []
    gap = min_gap_s * fps
    for t, s in found:
        if cuts and t - cuts[-1][0] < gap:
            if s > cuts[-1][1]:
                cuts[-1] = (t, s)
            continue
        cuts.append((t, s))
    return [t for t, _ in cuts]


def _jpeg_encoder(width: int, height: int) -> Any:
    av = _require()
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    return ctx


# ---------------------------------------------------------------------------
# Synthetic test videos
# ---------------------------------------------------------------------------
ShotSpec = float | tuple[float, str]

#: Base colours of successive busy shots: far apart in hue and brightness.
PALETTE = [(200, 40, 40), (30, 160, 60), (40, 60, 210), (230, 200, 40), (150, 40, 170),
           (20, 190, 200), (240, 130, 20), (90, 90, 90)]
FLAT_GREYS = [110, 40, 180, 75, 150]


@dataclass(frozen=True)
class TestVideo:
    """A synthetic video and the ground truth it was made from."""

    __test__ = False  # not a pytest class

    path: str
    fps: int
    width: int
    height: int
    frames: int
    cut_frames: list[int]
    flash_frames: list[int]
    styles: list[str]

    @property
    def duration_ms(self) -> int:
        return round(self.frames * 1000 / self.fps)

    @property
    def cuts_ms(self) -> list[int]:
        return [round(f * 1000 / self.fps) for f in self.cut_frames]

    def __repr__(self) -> str:
        return (f"<TestVideo {os.path.basename(self.path)!r} {self.width}x{self.height} "
                f"{self.frames} frames, cuts at {self.cut_frames}>")


def make_test_video(path: str | os.PathLike[str], shots: Sequence[ShotSpec] = (2.0, 3.0, 2.0),
                    *, flashes: Sequence[float] = (), fps: int = 25,
                    size: tuple[int, int] = (160, 90), codec: str = "libx264",
                    style: str = "busy") -> TestVideo:
    """Encode a video whose hard cuts are known: one shot per item of ``shots``.

    Args:
        shots: each shot's length in seconds, or ``(seconds, style)``; ``style`` is
            ``"busy"`` (sharp, colourful, moving texture) or ``"flat"`` (uniform grey).
        flashes: times (s) of single white frames inside shots (not cuts).
        size: (width, height), both even.
        codec: ``libx264`` (MP4/MKV) or ``mpeg4``.
    """
    import numpy as np

    av = _require()
    p = os.fspath(path)
    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"size {size} must be even in both dimensions")
    plan: list[tuple[int, str]] = []
    for shot in shots:
        seconds, kind = (shot, style) if isinstance(shot, int | float) else shot
        if kind not in ("busy", "flat"):
            raise ValueError(f"shot style {kind!r}: use 'busy' or 'flat'")
        n = int(round(seconds * fps))
        if n < 1:
            raise ValueError(f"shot of {seconds} s is shorter than one frame at {fps} fps")
        plan.append((n, kind))
    total = sum(n for n, _ in plan)
    flash_frames = sorted({int(round(s * fps)) for s in flashes})
    cut_frames = list(np.cumsum([n for n, _ in plan])[:-1].astype(int).tolist())
    for f in flash_frames:
        if not 0 < f < total - 1 or any(abs(f - c) < 2 for c in cut_frames):
            raise ValueError(f"a flash at frame {f} must be inside a shot, 2+ frames from a cut")
    out = av.open(p, "w")
    try:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        else:
            stream.bit_rate = 4_000_000
        index = 0
        for shot_no, (n, kind) in enumerate(plan):
            rng = np.random.default_rng(1000 + shot_no)
            if kind == "busy":
                base = np.array(PALETTE[shot_no % len(PALETTE)], np.int16)
                blocks = rng.integers(-90, 90, (height // 6 + 2, width // 6 + 4, 3))
                texture = np.repeat(np.repeat(blocks, 6, axis=0), 6, axis=1)
            for k in range(n):
                if index in flash_frames:
                    img = np.full((height, width, 3), 255, np.uint8)
                elif kind == "flat":
                    img = np.full((height, width, 3), FLAT_GREYS[shot_no % len(FLAT_GREYS)],
                                  np.uint8)
                else:
                    shift = (3 * k) % 12
                    tex = texture[k % 6:k % 6 + height, shift:shift + width]
                    img = np.clip(base + tex, 0, 255).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = index
                for packet in stream.encode(frame):
                    out.mux(packet)
                index += 1
        for packet in stream.encode():
            out.mux(packet)
    except BaseException:
        out.close()
        os.unlink(p)
        raise
    out.close()
    return TestVideo(path=p, fps=fps, width=width, height=height, frames=total,
                     cut_frames=cut_frames, flash_frames=flash_frames,
                     styles=[kind for _, kind in plan])


__all__ = ["Analysis", "Limits", "TestVideo", "VideoError", "VideoInfo", "analyse",
           "clip_bounds_from_cuts", "detect_cuts", "make_test_video", "probe", "visual_score"]
