"""Where is the poster in a query photo? Candidate windows for query-by-image.

A poster on a wall, in a web page or in a shop window is a convex quadrilateral with edges all round.
``propose`` works on the image reduced to ``proposal_side`` and draws candidate quadrilaterals from two
sources:

- blobs: Canny edges closed by dilation; each blob's convex hull approximated by a quadrilateral (or its
  minimum-area rectangle). Finds a poster on a plain or softly textured background (wall, web page);
- lines: straight segments (OpenCV's line segment detector) gathered into lines in a small Hough
  accumulator, each line refitted to its segments by total least squares; every pair of near-vertical
  lines with every pair of near-horizontal lines makes a quadrilateral (their four intersections). Finds
  a poster whose outline touches a busy background, where the blob of edges spreads beyond the poster.

A candidate must be a possible poster — convex, its shorter side at least ``min_side_px`` pixels of the
upload, square to tall portrait (height / width in ``aspect_range``), less than the whole frame — and, for
lines, its four sides must lie on edges (share of each side's sample points near a Canny edge at least
``support_min``). Blobs whose four sides lie on edges ("clean") come first, then the line quadrilaterals
and other blobs, each group by edge support x rectangularity x sqrt(area share); overlapping candidates
are dropped and the best ``max_windows`` kept. ``rectify`` undoes the perspective of one window with a
homography, so a poster photographed at an angle becomes an upright rectangle: the crop then goes through
the same resize policy and model as the catalog's posters.

Chosen by measurement (README "Quality"): against multi-scale sliding windows at 2:3 (they find wall
photos but not a poster 20 % of a web page's height, and cost six or more model images); against blobs
without the size and aspect filters (small text blocks of a plain poster then outrank a blurred copy's own
match); lines ranked with the blobs instead of after the clean ones (a textured poster's side plus a page
rule outranked the poster). Lines find posters that touch a busy background and rectify rotated copies.
OpenCV (opencv-python-headless) does the image work; it is imported on first use, so the ``whole`` query
path does not need it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from types import ModuleType

log = logging.getLogger(__name__)

# OpenCV runs single-threaded: a request thread per core already uses the machine, and the images are small.
CV_THREADS = 1
QUAD_CORNERS = 4
GAUSSIAN_KERNEL = 5  # before Canny
LINE_GAUSSIAN_KERNEL = 3  # before the line segment detector (it has its own smoothing)
DILATE_KERNEL = 3
MIN_PIXELS = 1.0
THETA_BINS = 180  # Hough accumulator: 1 degree ...
RHO_BIN = 2.0  # ... by 2 pixels
PEAK_NEIGHBOURHOOD = 3  # accumulator cells summed (box) and compared (local maximum)
REFINE_DISTANCE = 3.0  # a segment belongs to a line when both its ends are this close (pixels) ...
REFINE_ANGLE_DEG = 3.0  # ... and it is this parallel
REFINE_ROUNDS = 2
LINE_NMS_ANGLE_DEG = 4.0  # two lines closer than this in angle and ...
LINE_NMS_DISTANCE = 8.0  # ... in position (pixels, near the image centre) are the same line
FRAME_MARGIN_SHARE = 0.02  # a quadrilateral's corners may lie this share of the shorter side off the frame


@dataclass(frozen=True)
class LocaliseConfig:
    """How candidate poster windows are found (every threshold measured on the real-photo catalog)."""

    proposal_side: int = 512  # edges are searched on the image reduced to this longer side
    max_windows: int = 4  # candidate windows kept (besides the whole image)
    min_area_share: float = 0.008  # a candidate's area, as a share of the image area
    max_area_share: float = 0.95  # larger is the whole frame: the whole-image window covers it
    min_side_px: float = 64.0  # shorter side of a window in the uploaded image's pixels (smaller: text, logos)
    aspect_range: tuple[float, float] = (0.8, 2.0)  # height / width of a window: square to tall portrait
    canny_low: int = 30
    canny_high: int = 90
    # Blobs: edges closed by dilation, outer contours only, and every closed contour of the lightly dilated
    # edges (a poster inside a scene whose outer blob is the whole scene).
    dilate_external: int = 2
    dilate_nested: int = 1
    approx_epsilon: float = 0.03  # polygon approximation tolerance, as a share of the hull's perimeter
    lines: bool = True  # the straight-line source (ranked after the clean blobs: the busy-scene fallback)
    min_segment_share: float = 0.02  # segments shorter than this share of the shorter side are ignored
    min_line_share: float = 0.12  # a line's segments must add up to this share of the shorter side
    line_peaks: int = 24  # accumulator peaks examined per orientation
    lines_per_orientation: int = 12  # near-vertical and near-horizontal lines kept (12 -> 66 x 66 pairs)
    orientation_tolerance_deg: float = 30.0  # how far from vertical / horizontal a poster side may lean
    support_samples: int = 32  # points checked along each side
    support_tolerance: int = 2  # a point is on an edge when a Canny edge is within this many pixels
    support_min: float = 0.6  # every side of a line quadrilateral must be this much on edges
    nms_iou: float = 0.8  # a window overlapping a better one this much (bounding boxes) is dropped

    def validate(self) -> None:
        lo, hi = self.aspect_range
        if self.proposal_side < 32 or self.max_windows < 0:
            raise ValueError(
                f"localisation expected proposal_side >= 32 and max_windows >= 0, "
                f"got {self.proposal_side} and {self.max_windows}"
            )
        if not (0 < lo <= hi) or not (0 <= self.min_area_share < self.max_area_share <= 1):
            raise ValueError(
                f"localisation expected 0 < aspect low <= high and 0 <= min area < max area <= 1, "
                f"got aspect {self.aspect_range}, area {self.min_area_share}..{self.max_area_share}"
            )
        if not 0 <= self.support_min <= 1 or self.support_samples < 1:
            raise ValueError(
                f"localisation expected support_min in [0, 1] and support_samples >= 1, "
                f"got {self.support_min} and {self.support_samples}"
            )


@dataclass(frozen=True)
class Proposal:
    """A candidate window: its corners (top-left, top-right, bottom-right, bottom-left) and its rank score."""

    quad: np.ndarray  # (4, 2) float32, in the coordinates of the image given to ``propose``
    score: float  # edge support x rectangularity x sqrt(area share): higher first

    @property
    def box(self) -> tuple[float, float, float, float]:
        return quad_box(self.quad)


def opencv() -> ModuleType:
    """The cv2 module, single-threaded; a readable error when it is not installed."""
    try:
        import cv2
    except ImportError as exc:
        raise ImportError(
            "poster localisation expected OpenCV (pip install opencv-python-headless, part of the "
            "[serve] and [eval] extras); the whole-image query path does not need it"
        ) from exc
    cv2.setNumThreads(CV_THREADS)
    return cv2


def order_corners(points: np.ndarray) -> np.ndarray:
    """Four points -> (top-left, top-right, bottom-right, bottom-left), clockwise on screen (y down)."""
    p = np.asarray(points, np.float32).reshape(QUAD_CORNERS, 2)
    centre = p.mean(axis=0)
    p = p[np.argsort(np.arctan2(p[:, 1] - centre[1], p[:, 0] - centre[0]), kind="stable")]
    return np.roll(p, -int(np.argmin(p.sum(axis=1))), axis=0)


def quad_box(quad: np.ndarray) -> tuple[float, float, float, float]:
    """Axis-aligned bounding box (x0, y0, x1, y1) of a quadrilateral."""
    q = np.asarray(quad, np.float64)
    return float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())


def quad_sizes(quads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(widths, heights) of the rectangles quadrilaterals (n, 4, 2) stand for: means of opposite sides."""
    q = np.asarray(quads, np.float64)
    widths = (np.linalg.norm(q[:, 1] - q[:, 0], axis=1) + np.linalg.norm(q[:, 2] - q[:, 3], axis=1)) / 2
    heights = (np.linalg.norm(q[:, 3] - q[:, 0], axis=1) + np.linalg.norm(q[:, 2] - q[:, 1], axis=1)) / 2
    return widths, heights


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ---- source 1: blobs of edges ------------------------------------------------------------------------------------
def _blob_quads(
    cv2: Any, edges: np.ndarray, area: float, config: LocaliseConfig
) -> tuple[list[np.ndarray], list[float]]:
    """(quadrilaterals, rectangularity = hull area / quadrilateral area) of the edge blobs."""
    kernel = np.ones((DILATE_KERNEL, DILATE_KERNEL), np.uint8)
    quads: list[np.ndarray] = []
    rectangularity: list[float] = []
    for mode, iterations in ((cv2.RETR_EXTERNAL, config.dilate_external), (cv2.RETR_LIST, config.dilate_nested)):
        closed = cv2.dilate(edges, kernel, iterations=iterations) if iterations else edges
        contours, _ = cv2.findContours(closed, mode, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            _, _, w, h = cv2.boundingRect(contour)
            if not config.min_area_share * area <= w * h <= config.max_area_share * area:
                continue
            hull = cv2.convexHull(contour)
            approx = cv2.approxPolyDP(hull, config.approx_epsilon * cv2.arcLength(hull, True), True)
            if len(approx) == QUAD_CORNERS:
                quad = order_corners(approx)
                quad_area = float(cv2.contourArea(quad))
            else:
                rect = cv2.minAreaRect(hull)
                quad = order_corners(cv2.boxPoints(rect))
                quad_area = float(rect[1][0] * rect[1][1])
            quads.append(quad)
            rectangularity.append(min(1.0, float(cv2.contourArea(hull)) / max(quad_area, MIN_PIXELS)))
    return quads, rectangularity


# ---- source 2: straight lines ------------------------------------------------------------------------------------
def _refit(segments: np.ndarray, lengths: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, float]:
    """Total least squares line (unit normal n, offset rho: n . p = rho) through the selected segments' ends."""
    points = np.vstack([segments[sel, :2], segments[sel, 2:]])
    weights = np.concatenate([lengths[sel], lengths[sel]])
    centre = (points * weights[:, None]).sum(axis=0) / weights.sum()
    spread = ((points - centre) * weights[:, None]).T @ (points - centre)
    normal = np.linalg.eigh(spread)[1][:, 0]  # direction of least spread
    return normal, float(centre @ normal)


def _orientation_lines(
    cv2: Any, segments: np.ndarray, theta: np.ndarray, shape: tuple[int, int], config: LocaliseConfig
) -> np.ndarray:
    """Lines (n, 3) as homogeneous (a, b, c) with a^2 + b^2 = 1, strongest first, from one orientation's
    segments; ``theta`` is each segment's normal angle (continuous within the orientation)."""
    h, w = shape
    shorter = min(h, w)
    if len(segments) == 0:
        return np.zeros((0, 3))
    delta = segments[:, 2:] - segments[:, :2]
    lengths = np.hypot(delta[:, 0], delta[:, 1])
    directions = delta / lengths[:, None]
    mids = (segments[:, :2] + segments[:, 2:]) / 2
    rho = mids[:, 0] * np.cos(theta) + mids[:, 1] * np.sin(theta)
    diag = float(np.hypot(h, w))
    step = np.pi / THETA_BINS
    theta0 = float(theta.min()) - step
    acc = np.zeros((int(np.ptp(theta) / step) + 3, int(2 * diag / RHO_BIN) + 2), np.float32)
    np.add.at(acc, (((theta - theta0) / step).astype(int), ((rho + diag) / RHO_BIN).astype(int)), lengths)
    size = (PEAK_NEIGHBOURHOOD, PEAK_NEIGHBOURHOOD)
    acc = cv2.boxFilter(acc, -1, size, normalize=False, borderType=cv2.BORDER_CONSTANT)
    peaks = (acc == cv2.dilate(acc, np.ones(size, np.uint8))) & (acc >= config.min_line_share * shorter)
    rows, cols = np.nonzero(peaks)
    order = np.argsort(-acc[rows, cols], kind="stable")[: config.line_peaks]
    parallel = np.sin(np.deg2rad(REFINE_ANGLE_DEG))
    lines, strengths = [], []
    for r, c in zip(rows[order], cols[order], strict=True):
        angle = theta0 + (r + 0.5) * step
        normal, offset = np.array([np.cos(angle), np.sin(angle)]), (c + 0.5) * RHO_BIN - diag
        sel = None
        for _ in range(REFINE_ROUNDS):
            dist = np.maximum(np.abs(segments[:, :2] @ normal - offset), np.abs(segments[:, 2:] @ normal - offset))
            near = (dist <= REFINE_DISTANCE) & (np.abs(directions @ normal) <= parallel)
            if not near.any():
                break
            sel = near
            normal, offset = _refit(segments, lengths, sel)
        if sel is not None:
            lines.append((normal[0], normal[1], -offset))
            strengths.append(float(lengths[sel].sum()))
    if not lines:
        return np.zeros((0, 3))
    found = np.array(lines)
    centre = np.array([w / 2, h / 2])
    same_angle = np.cos(np.deg2rad(LINE_NMS_ANGLE_DEG))
    kept: list[int] = []
    for i in np.argsort(-np.array(strengths), kind="stable"):
        foot = centre - (found[i, :2] @ centre + found[i, 2]) * found[i, :2]  # the centre projected on line i
        if all(
            abs(found[i, :2] @ found[j, :2]) < same_angle or abs(found[j, :2] @ foot + found[j, 2]) >= LINE_NMS_DISTANCE
            for j in kept
        ):
            kept.append(int(i))
            if len(kept) == config.lines_per_orientation:
                break
    return found[kept]


def _line_quads(cv2: Any, grey: np.ndarray, config: LocaliseConfig) -> np.ndarray:
    """Quadrilaterals (n, 4, 2) bounded by two near-vertical and two near-horizontal lines."""
    detected = cv2.createLineSegmentDetector().detect(grey)[0]
    if detected is None:
        return np.zeros((0, 4, 2))
    segments = detected.reshape(-1, 4).astype(np.float64)
    delta = segments[:, 2:] - segments[:, :2]
    segments = segments[np.hypot(delta[:, 0], delta[:, 1]) >= config.min_segment_share * min(grey.shape)]
    delta = segments[:, 2:] - segments[:, :2]
    theta = (np.arctan2(delta[:, 1], delta[:, 0]) + np.pi / 2) % np.pi  # normal angle in [0, pi)
    tolerance = np.deg2rad(config.orientation_tolerance_deg)
    vertical_theta = np.where(theta > np.pi / 2, theta - np.pi, theta)  # around 0, continuous
    vertical = np.abs(vertical_theta) < tolerance
    horizontal = np.abs(theta - np.pi / 2) < tolerance
    verticals = _orientation_lines(cv2, segments[vertical], vertical_theta[vertical], grey.shape, config)
    horizontals = _orientation_lines(cv2, segments[horizontal], theta[horizontal], grey.shape, config)
    if len(verticals) < 2 or len(horizontals) < 2:
        return np.zeros((0, 4, 2))
    h, w = grey.shape
    verticals = verticals[np.argsort(-(verticals[:, 1] * h / 2 + verticals[:, 2]) / verticals[:, 0])]  # left first
    horizontals = horizontals[np.argsort(-(horizontals[:, 0] * w / 2 + horizontals[:, 2]) / horizontals[:, 1])]
    vi, vj = np.triu_indices(len(verticals), 1)
    hi, hj = np.triu_indices(len(horizontals), 1)
    left, right = verticals[np.repeat(vi, len(hi))], verticals[np.repeat(vj, len(hi))]
    top, bottom = horizontals[np.tile(hi, len(vi))], horizontals[np.tile(hj, len(vi))]
    corners = [np.cross(a, b) for a, b in ((left, top), (right, top), (right, bottom), (left, bottom))]
    z = np.stack([c[:, 2] for c in corners], axis=1)
    ok = (np.abs(z) > np.finfo(np.float64).eps).all(axis=1)
    quads = np.stack([c[:, :2] / np.where(ok, c[:, 2], 1.0)[:, None] for c in corners], axis=1)
    return quads[ok]


# ---- ranking -----------------------------------------------------------------------------------------------------
def edge_support(near_edge: np.ndarray, quads: np.ndarray, samples: int) -> np.ndarray:
    """(n, 4): share of sample points along each side of each quadrilateral that lie on ``near_edge``."""
    h, w = near_edge.shape
    t = (np.arange(samples) + 0.5) / samples
    start = np.asarray(quads, np.float64)
    points = start[:, :, None, :] + (np.roll(start, -1, axis=1) - start)[:, :, None, :] * t[None, None, :, None]
    x, y = np.round(points[..., 0]).astype(np.int64), np.round(points[..., 1]).astype(np.int64)
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    on_edge = near_edge[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)] & inside
    return np.asarray(on_edge.mean(axis=2))


def _plausible(quads: np.ndarray, shape: tuple[int, int], pixel_scale: float, config: LocaliseConfig) -> np.ndarray:
    """Mask of quadrilaterals that can be a poster: size, aspect, area and inside the frame."""
    h, w = shape
    widths, heights = quad_sizes(quads)
    area = widths * heights
    margin = FRAME_MARGIN_SHARE * min(h, w)
    ok = np.minimum(widths, heights) * pixel_scale >= config.min_side_px
    ok &= (heights >= config.aspect_range[0] * widths) & (heights <= config.aspect_range[1] * widths)
    ok &= (area >= config.min_area_share * h * w) & (area <= config.max_area_share * h * w)
    ok &= (quads[..., 0] >= -margin).all(axis=1) & (quads[..., 0] <= w + margin).all(axis=1)
    ok &= (quads[..., 1] >= -margin).all(axis=1) & (quads[..., 1] <= h + margin).all(axis=1)
    edges = np.roll(quads, -1, axis=1) - quads
    turns = edges[:, :, 0] * np.roll(edges, -1, axis=1)[:, :, 1] - edges[:, :, 1] * np.roll(edges, -1, axis=1)[:, :, 0]
    ok &= (turns > 0).all(axis=1)  # convex, corners clockwise on screen (y down)
    return np.asarray(ok)


def propose(rgb: np.ndarray, config: LocaliseConfig = LocaliseConfig(), pixel_scale: float = 1.0) -> list[Proposal]:
    """Candidate poster windows in an RGB image ``(h, w, 3)`` uint8, best first, in its coordinates.

    ``pixel_scale`` is the number of uploaded-image pixels per pixel of ``rgb`` (for ``min_side_px``).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image (h, w, 3), got {rgb.dtype} {rgb.shape}")
    if config.max_windows == 0:
        return []
    cv2 = opencv()
    h, w = rgb.shape[:2]
    reduce = min(1.0, config.proposal_side / max(h, w))
    small = rgb
    if reduce < 1.0:
        small = cv2.resize(rgb, (max(1, round(w * reduce)), max(1, round(h * reduce))), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(
        cv2.GaussianBlur(grey, (GAUSSIAN_KERNEL, GAUSSIAN_KERNEL), 0), config.canny_low, config.canny_high
    )
    area = float(edges.shape[0] * edges.shape[1])
    kernel = np.ones((DILATE_KERNEL, DILATE_KERNEL), np.uint8)
    near_edge = cv2.dilate(edges, kernel, iterations=config.support_tolerance) > 0
    blob_quads, rectangularity = _blob_quads(cv2, edges, area, config)
    quads = np.asarray(blob_quads, np.float64).reshape(-1, 4, 2)
    keep = _plausible(quads, edges.shape, pixel_scale / reduce, config)
    quads, rect = quads[keep], np.asarray(rectangularity)[keep]
    support = edge_support(near_edge, quads, config.support_samples)
    clean = support.min(axis=1, initial=1.0) >= config.support_min
    if config.lines:
        grey_lines = cv2.GaussianBlur(grey, (LINE_GAUSSIAN_KERNEL, LINE_GAUSSIAN_KERNEL), 0)
        line_quads = _line_quads(cv2, grey_lines, config)
        line_quads = line_quads[_plausible(line_quads, edges.shape, pixel_scale / reduce, config)]
        line_support = edge_support(near_edge, line_quads, config.support_samples)
        good_lines = line_support.min(axis=1, initial=1.0) >= config.support_min
        quads = np.concatenate([quads, line_quads[good_lines]])
        rect = np.concatenate([rect, np.ones(int(good_lines.sum()))])
        support = np.concatenate([support, line_support[good_lines]])
    if len(quads) == 0:
        return []
    widths, heights = quad_sizes(quads)
    score = support.mean(axis=1) * rect * np.sqrt(widths * heights / area)
    first = np.zeros(len(quads), bool)
    first[: len(clean)] = clean  # clean blobs before the rest: lines are the busy-scene fallback
    kept: list[Proposal] = []
    for i in np.lexsort((-score, ~first)):
        box = quad_box(quads[i])
        if all(box_iou(box, other.box) < config.nms_iou for other in kept):
            kept.append(Proposal(quads[i].astype(np.float32), float(score[i])))
            if len(kept) == config.max_windows:
                break
    return [Proposal((p.quad / np.float32(reduce)).astype(np.float32), p.score) for p in kept]


def rectify(rgb: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The quadrilateral ``quad`` of ``rgb`` warped to an upright rectangle (homography), uint8 (h, w, 3)."""
    cv2 = opencv()
    widths, heights = quad_sizes(np.asarray(quad)[None])
    w, h = max(1, round(float(widths[0]))), max(1, round(float(heights[0])))
    target = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    homography = cv2.getPerspectiveTransform(np.asarray(quad, np.float32), target)
    return np.asarray(
        cv2.warpPerspective(rgb, homography, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    )
