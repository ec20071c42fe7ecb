"""Report figures (matplotlib, object-oriented API without pyplot), returned as PNG bytes.

Every function takes plain arrays/dicts (no store access) and returns the encoded PNG, so the
same image is embedded in the HTML (base64) and the PDF.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from rsa.report.data import LABELS, UNITS

_DPI = 150
_BAND = {"color": "0.55", "alpha": 0.25, "lw": 0}


def _figure(**kwargs):
    """A pyplot-free Figure (no global state, no backend switch in the caller's session)."""
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _cmap(name: str = "tab10"):
    import matplotlib

    return matplotlib.colormaps[name]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def segment_colors(names: Sequence[str]) -> dict[str, tuple]:
    """A stable colour per segment name (tab10)."""
    cmap = _cmap()
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def migration_figure(curves: Sequence[Mapping], limits: Mapping[str, tuple[float, float]], *,
                     title: str) -> bytes:
    """Migration curves over time per axis, total translation and MTPM, with precision bands.

    Parameters
    ----------
    curves : sequence of mappings
        One per subject: ``label``; ``day`` (n,) days since the reference exam; ``double`` (n,)
        bool (double exams are drawn hollow and not joined); ``values`` component → (n,) float
        (NaN = not measured); ``significant`` component → (n,) bool.
    limits : mapping component → (lower, upper)
        95 % precision limits from double exams (empty when not computed).
    title : str
    """
    comps = (("tx", "ty", "tz", "total_translation"), ("rx", "ry", "rz", "mtpm"))
    fig = _figure(figsize=(11, 5.4))
    axes = fig.subplots(2, 4, sharex=True)
    colors = _cmap()
    for r, row in enumerate(comps):
        for c, comp in enumerate(row):
            ax = axes[r, c]
            if comp in limits:
                lo, hi = limits[comp]
                ax.axhspan(lo, hi, **_BAND, label="95 % precision limits (double exams)")
            ax.axhline(0.0, color="0.3", lw=0.6)
            many = len(curves) > 8   # a cohort: one colour, no per-subject legend
            for k, cv in enumerate(curves):
                day = np.asarray(cv["day"], float)
                val = np.asarray(cv["values"][comp], float)
                dbl = np.asarray(cv["double"], bool)
                sig = np.asarray(cv["significant"][comp], bool)
                col = (0.12, 0.47, 0.71, 0.35) if many else colors(k % 10)
                name = f"subjects (n = {len(curves)})" if many else cv["label"]
                ax.plot(day[~dbl], val[~dbl], "-o", color=col, ms=3 if many else 4,
                        lw=0.7 if many else 1.5, label=name)
                ax.plot(day[dbl], val[dbl], "o", mfc="none", color=col, ms=6,
                        label="double exams" if many else f"{cv['label']} double exams")
                ax.plot(day[sig], val[sig], "x", color="#c0392b", ms=9, mew=1.6,
                        label="beyond precision limit")
            ax.set_title(f"{LABELS[comp]} ({UNITS[comp]})", fontsize=9)
            ax.tick_params(labelsize=7)
            if r == 1:
                ax.set_xlabel("days since reference exam", fontsize=8)
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    labels = list(handles)
    fig.legend([handles[k] for k in labels], labels, loc="outside lower center",
               ncol=min(4, len(labels)), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def level_motion_figure(levels: Sequence[Mapping], *, title: str) -> bytes:
    """Intervertebral motion per level and exam (grouped bars) with precision bands.

    Parameters
    ----------
    levels : sequence of mappings
        One per level (motion): ``label``; ``exams`` (n,) exam ids; ``values`` component →
        (n,); ``limits`` component → (lower, upper) (may be empty).
    """
    n = len(levels)
    fig = _figure(figsize=(11, 2.9 * n + 0.6))
    axes = fig.subplots(n, 2, squeeze=False)
    colors = _cmap()
    for i, lev in enumerate(levels):
        x = np.arange(len(lev["exams"]))
        for j, group in enumerate((("rx", "ry", "rz"), ("tx", "ty", "tz"))):
            ax = axes[i, j]
            w = 0.26
            for k, comp in enumerate(group):
                xs = x + (k - 1) * w
                if comp in lev["limits"]:
                    lo, hi = lev["limits"][comp]
                    ax.bar(xs, hi - lo, w * 0.95, bottom=lo, color="0.85", ec="0.55", lw=0.5,
                           label="95 % precision limits" if k == 0 else None)
                ax.bar(xs, np.asarray(lev["values"][comp], float), w * 0.7,
                       color=colors(k), label=LABELS[comp])
            ax.axhline(0.0, color="0.3", lw=0.6)
            ax.set_xticks(x, lev["exams"], fontsize=7, rotation=30, ha="right")
            ax.tick_params(axis="y", labelsize=7)
            unit = "°" if j == 0 else "mm"
            ax.set_ylabel(f"{'rotation' if j == 0 else 'translation'} ({unit})", fontsize=8)
            ax.set_title(f"{lev['label']}: {'rotations' if j == 0 else 'translations'}",
                         fontsize=9)
            ax.legend(fontsize=7, frameon=False, ncol=4)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def _downsample(image: np.ndarray, max_px: int) -> tuple[np.ndarray, int]:
    k = max(1, int(np.ceil(max(image.shape) / max_px)))
    h, w = (image.shape[0] // k) * k, (image.shape[1] // k) * k
    return image[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3)), k


def _show(ax, image: np.ndarray, u0: float, v0: float, k: int, top: float = 99.7) -> None:
    lo, hi = np.percentile(image, (1.0, top))
    h, w = image.shape
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="none",
              extent=(u0 - 0.5, u0 + w * k - 0.5, v0 + h * k - 0.5, v0 - 0.5))


def overlay_figure(panels: Sequence[Mapping], colors: Mapping[str, tuple], *,
                   title: str, max_px: int = 700) -> bytes:
    """Radiograph overlays: cage markers with residual vectors, identified beads with labels.

    Parameters
    ----------
    panels : sequence of mappings
        One per view: ``view`` name; ``image`` (rows, cols) float, beads bright; ``markers``
        (K, 4) u, v, du, dv px of identified cage markers (residual = detected − reprojected);
        ``beads`` list of (u, v, label, segment) of identified patient beads;
        ``unlabelled`` (L, 2) u, v of patient beads not assigned to a segment.
    colors : mapping segment → colour
    max_px : int
        Largest side of the downsampled whole-view image.
    """
    from matplotlib.patches import Rectangle

    fig = _figure(figsize=(11, 3.6 * len(panels) + 0.4))
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for i, p in enumerate(panels):
        img = np.asarray(p["image"], float)
        small, k = _downsample(img, max_px)
        ax = axes[i, 0]
        _show(ax, small, 0, 0, k)
        mk = np.asarray(p["markers"], float).reshape(-1, 4)
        if len(mk):
            res = np.hypot(mk[:, 2], mk[:, 3])
            big = float(np.nanmax(res)) if np.isfinite(res).any() else 0.0
            scale = 0.06 * img.shape[1] / big if big > 0 else 1.0
            ax.plot(mk[:, 0], mk[:, 1], "o", mfc="none", mec="#f1c40f", ms=3, mew=0.6,
                    label=f"cage markers ({len(mk)})")
            ax.quiver(mk[:, 0], mk[:, 1], mk[:, 2] * scale, mk[:, 3] * scale, angles="xy",
                      scale_units="xy", scale=1.0, color="#e74c3c", width=0.003,
                      label=f"residual × {scale:.0f} (max {big:.2f} px)")
        uv = np.array([(b[0], b[1]) for b in p["beads"]], float).reshape(-1, 2)
        if len(uv):
            lo, hi = uv.min(0) - 60, uv.max(0) + 60
            ax.add_patch(Rectangle(lo, *(hi - lo), fill=False, ec="#3498db", lw=0.8,
                                       label="patient beads (right)"))
        ax.set_title(f"view {p['view']}: whole image (1:{k})", fontsize=9)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=3,
                  frameon=False)
        ax.tick_params(labelsize=6)
        ax = axes[i, 1]
        if len(uv):
            u0, v0 = np.maximum(np.floor(lo).astype(int), 0)
            u1, v1 = np.minimum(np.ceil(hi).astype(int), img.shape[::-1])
            crop, kc = _downsample(img[v0:v1, u0:u1], 600)
            _show(ax, crop, u0, v0, kc, top=90.0)  # metal and beads saturate; bone visible
            done = set()
            for u, v, label, seg in p["beads"]:
                ax.plot(u, v, "o", mfc="none", mec=colors.get(seg, "w"), ms=7, mew=0.9,
                        label=seg if seg not in done else None)
                done.add(seg)
                ax.annotate(label, (u, v), xytext=(4, 4), textcoords="offset points",
                            fontsize=5.5, color=colors.get(seg, "w"))
            un = np.asarray(p.get("unlabelled", np.zeros((0, 2))), float).reshape(-1, 2)
            if len(un):
                ax.plot(un[:, 0], un[:, 1], "s", mfc="none", mec="#e67e22", ms=6,
                        label="not assigned")
            ax.legend(fontsize=6, loc="lower right", framealpha=0.7)
            ax.set_xlim(u0 - 0.5, u1 - 0.5)
            ax.set_ylim(v1 - 0.5, v0 - 0.5)
        else:
            ax.text(0.5, 0.5, "no identified patient beads", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_title(f"view {p['view']}: identified beads", fontsize=9)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def beads3d_figure(segments: Mapping[str, tuple[Sequence[str], np.ndarray]],
                   colors: Mapping[str, tuple], *, title: str) -> bytes:
    """Segments' beads in 3D (perspective, frontal x–y and lateral z–y projections).

    Parameters
    ----------
    segments : mapping name → (bead ids, (M, 3) mm)
        Bead centres in the cage (lab) frame; NaN rows are skipped.
    """
    fig = _figure(figsize=(11, 4.2))
    ax3 = fig.add_subplot(1, 3, 1, projection="3d")
    axf = fig.add_subplot(1, 3, 2)
    axl = fig.add_subplot(1, 3, 3)
    allp = []
    for name, (ids, xyz) in segments.items():
        xyz = np.asarray(xyz, float).reshape(-1, 3)
        ok = np.isfinite(xyz).all(axis=1)
        p = xyz[ok]
        allp.append(p)
        col = colors.get(name, "k")
        ax3.scatter(p[:, 0], p[:, 1], p[:, 2], color=col, s=14, label=name, depthshade=False)
        for ax, (a, b) in ((axf, (0, 1)), (axl, (2, 1))):
            ax.plot(p[:, a], p[:, b], "o", color=col, ms=4, label=name)
            for bid, q in zip(np.asarray(ids)[ok], p, strict=True):
                ax.annotate(str(bid), (q[a], q[b]), xytext=(3, 3), textcoords="offset points",
                            fontsize=5.5, color=col)
    if allp:
        pts = np.vstack(allp)
        if len(pts):
            span = np.ptp(pts, axis=0)
            ax3.set_box_aspect(np.maximum(span, 1e-3 + span.max() * 0.05))
    ax3.set_xlabel("x (mm)", fontsize=7)
    ax3.set_ylabel("y (mm)", fontsize=7)
    ax3.set_zlabel("z (mm)", fontsize=7)
    ax3.tick_params(labelsize=6)
    ax3.legend(fontsize=7, loc="upper left")
    axf.set(xlabel="x (mm)", ylabel="y (mm)", title="frontal (x–y)")
    axl.set(xlabel="z (mm)", ylabel="y (mm)", title="lateral (z–y)")
    for ax in (axf, axl):
        ax.margins(0.12)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_size(8)
        ax.yaxis.label.set_size(8)
        ax.title.set_size(9)
    fig.suptitle(title, fontsize=10)
    return _png(fig)
