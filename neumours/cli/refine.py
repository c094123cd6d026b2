"""``neumours refine``: correct a trained INR from rendered views of one case (DESCRIPTION says how)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from neumours import strict_json
from neumours.cli.options import (add_command, add_device_option, add_force_geometry_option,
                                  add_precision_option, add_quiet_option, finite_float, int_range)
from neumours.cli.render import image_size
from neumours.errors import NeumoursError

DESCRIPTION = """\
Correct a trained INR from rendered views of one case: an image loss on the
views flows back through the raymarcher into the INR's weights.

Targets, one of:
  --from-labels SEG.nii.gz  a corrected label volume, rendered from --views
                            orbiting cameras (with --masks: as tumour masks)
  --targets DIR             DIR/targets.npz with azimuth and elevation (V,) in
                            degrees and either images (V, H, W, 3) with optional
                            weights (V, H, W) (0 = don't care), or masks (V, H, W)
                            of 0 (not tumour), 1 (tumour), 255 (don't care)

Writes the refined checkpoint and, beside it, a .json report: loss and seconds
per step and, when the case has labels, Dice per region before and after. The
two are written together (both or neither); the report holds the checkpoint's
SHA-256, so a report can always be matched to its checkpoint. The report is
strict JSON: an infinite HD95 (exactly one side empty) is the string "inf"."""

EPILOG = """\
Gradient paths (--path): cache renders the cached class-probability volume
(cost set by the voxels, whatever the views); direct evaluates the INR at the
ray samples (cost set by pixels x samples per ray: small or masked views).
On the CPU device a step at --size 256x256 on a 96x96x64 case takes minutes:
use small views (e.g. --views 2 --size 64x64 --steps 3) there."""

EXAMPLES = ("neumours refine data/Phantom-00000-000 --checkpoint run/best.safetensors --from-labels corrected.nii.gz "
            "--out refined.safetensors",
            "neumours refine data/Phantom-00000-000 --checkpoint run/best.safetensors --from-labels corrected.nii.gz "
            "--views 2 --size 64x64 --steps 3 --out refined.safetensors   # CPU-sized")


def report_path(checkpoint: str | Path) -> Path:
    """The .json report beside a refined checkpoint."""
    return Path(checkpoint).with_suffix(".json")


#: Largest target image edge, pixels (as ``--size``).
MAX_TARGET_EDGE = 16384


def _read_targets_archive(file: Path) -> dict[str, np.ndarray]:
    """The arrays of ``targets.npz``, every one read (nothing unpickled); one line for anything else."""
    import zipfile
    import zlib

    single = (f"{file}: holds one array, not an .npz archive of named arrays "
              "(np.savez(file, images=..., azimuth=..., elevation=...))")
    try:
        data = np.load(file, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise NeumoursError(single)
        try:
            return {name: np.asarray(data[name]) for name in data.files}
        finally:
            data.close()
    except NeumoursError:
        raise
    except MemoryError:
        raise NeumoursError(f"{file}: too large to load") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, NotImplementedError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise NeumoursError(f"{file}: not a readable NumPy .npz archive ({type(exc).__name__}: {detail})") from None


def _numeric(file: Path, name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise NeumoursError(f"{file}: {name} must hold numbers, got dtype {array.dtype}")
    return array


def _load_targets(path: Path, shape, spacing):
    """Cameras, image targets, weights and whether they came from masks, from ``path/targets.npz``
    (or ``path`` itself when it is the file), every array checked: kinds, shapes, sizes, finite values."""
    from neumours.render.box import volume_box
    from neumours.render.camera import fit_distance, orbit
    from neumours.refine.masks import mask_targets

    file = path if path.is_file() else path / "targets.npz"
    if not file.is_file():
        raise NeumoursError(f"{file}: targets file not found (expected images or masks, azimuth, elevation)")
    data = _read_targets_archive(file)
    names = set(data)
    if ("images" in names) == ("masks" in names):
        raise NeumoursError(f"{file}: needs exactly one of the arrays 'images' and 'masks', has {sorted(names)}")
    missing = [n for n in ("azimuth", "elevation") if n not in names]
    if missing:
        raise NeumoursError(f"{file}: missing array(s) {', '.join(missing)} (cameras need azimuth and elevation)")
    from_masks = "masks" in names
    azimuth = _numeric(file, "azimuth", data["azimuth"]).astype(float)
    elevation = _numeric(file, "elevation", data["elevation"]).astype(float)
    weights = None
    if from_masks:
        masks = _numeric(file, "masks", data["masks"])
        if masks.ndim != 3:
            raise NeumoursError(f"{file}: masks must be (views, height, width), got {masks.shape}")
        images_shape = (*masks.shape, 3)
    else:
        images = _numeric(file, "images", data["images"])
        images_shape = images.shape
        if images.ndim != 4 or images.shape[-1] != 3:
            raise NeumoursError(f"{file}: images must be (views, height, width, 3), got {images.shape}")
    views, height, width = images_shape[:3]
    if views < 1 or not (1 <= height <= MAX_TARGET_EDGE and 1 <= width <= MAX_TARGET_EDGE):
        raise NeumoursError(f"{file}: needs at least 1 view of 1..{MAX_TARGET_EDGE} x 1..{MAX_TARGET_EDGE} pixels, "
                            f"got {views} view(s) of {height} x {width}")
    if azimuth.shape != (views,) or elevation.shape != (views,):
        raise NeumoursError(f"{file}: {views} images but {azimuth.size} azimuths and {elevation.size} elevations "
                            f"(expected one of each per view, shape ({views},))")
    if not (np.isfinite(azimuth).all() and np.isfinite(elevation).all()):
        raise NeumoursError(f"{file}: azimuth and elevation must be finite degrees (a camera holds NaN or Inf)")
    if (np.abs(elevation) > 90).any():
        steep = float(elevation[np.abs(elevation) > 90][0])
        raise NeumoursError(f"{file}: elevation must be in [-90, 90] degrees, got {steep}")
    try:
        if from_masks:
            image_list, weights = mask_targets(masks)
            images = np.stack(image_list)
        else:
            images = images.astype(np.float32)
            if "weights" in names:
                weights = _numeric(file, "weights", data["weights"]).astype(np.float32)
    except ValueError as exc:
        raise NeumoursError(f"{file}: {exc}") from None
    if weights is not None and np.shape(weights) != images.shape[:3]:
        raise NeumoursError(f"{file}: weights must be {images.shape[:3]}, got {np.shape(weights)}")
    if not np.isfinite(images).all():
        raise NeumoursError(f"{file}: images contain NaN/Inf")
    if weights is not None and not (np.isfinite(weights).all() and (np.asarray(weights) >= 0).all()):
        raise NeumoursError(f"{file}: weights must be finite and >= 0")
    distance = fit_distance(volume_box(shape, spacing), 30.0, width / height)
    cameras = [orbit(float(a), float(e), distance, width=width, height=height) for a, e in zip(azimuth, elevation)]
    return cameras, list(images), None if weights is None else list(weights), from_masks


def _timed_cache(inr, vols):
    """The INR cached over the case and the seconds that took (its kernels compiled first, untimed)."""
    import time

    from neumours.infer.cache import VolumeCache

    VolumeCache(inr, vols, grid_shape=(2, 2, 2))
    start = time.perf_counter()
    cache = VolumeCache(inr, vols)
    cache.labels()
    return time.perf_counter() - start, cache


def _announce(args, device, forward_s: float, case, cameras, settings) -> None:
    """Before the first step: one line on stderr when the refinement will take more than a few minutes."""
    import sys

    import slangpy as spy

    from neumours.refine.estimate import refine_step_seconds
    from neumours.render.box import volume_box
    from neumours.estimates import long_work_note

    if args.quiet:
        return
    step_s = refine_step_seconds(args.path, forward_s, int(np.prod(case.shape)), cameras,
                                 volume_box(case.shape, case.spacing), settings.step)
    cpu = device.info.type == spy.DeviceType.cpu
    small = (args.path == "direct" and len(cameras) <= 2 and args.steps <= 2
             and all(c.width * c.height <= 32 * 32 for c in cameras))
    suggestion = "fewer --steps or --views, or a smaller --size, shorten it"
    if cpu and not small:
        suggestion = "for a CPU-sized run: --views 2 --size 32x32 --steps 2 --path direct"
    line = long_work_note(f"refinement ({args.steps} steps, {len(cameras)} views, path {args.path})",
                          step_s * args.steps, f"about {step_s:.0f} s a step, scaled from a measured "
                          f"{forward_s:.1f} s pass of the INR over the case", suggestion)
    if line is not None:
        print(line, file=sys.stderr, flush=True)


def refine_command(args) -> None:
    from neumours.data import list_cases, load_case, normalise
    from neumours.data.nifti import read_label_volume
    from neumours.device import get_device
    from neumours.eval.metrics import region_scores
    from neumours.infer.cache import VolumeCache
    from neumours.model.checkpoint import check_fits_data, checkpoint_bytes, load_checkpoint
    from neumours.model.inputs import CaseVolumes
    from neumours.model.inr import INR
    from neumours.refine.loop import Anchor, refine
    from neumours.refine.masks import mask_targets, render_label_masks, silhouette_settings
    from neumours.render.transfer import RenderSettings
    from neumours.render.views import orbit_cameras, render_label_views

    if (args.targets is None) == (args.from_labels is None):
        raise NeumoursError("give exactly one of --targets DIR or --from-labels SEG.nii.gz")
    if args.masks and args.from_labels is None:
        raise NeumoursError("--masks goes with --from-labels (a targets.npz says itself whether it holds masks)")
    if not str(args.out).endswith(".safetensors"):
        raise NeumoursError(f"{args.out}: the refined checkpoint must end in .safetensors")
    from neumours.data.layouts import case_files, resolve_case
    from neumours.outputs import Output, check_output_file, check_outputs

    check_output_file(args.out, "refined checkpoint (--out)")
    anchors = case_files(list_cases(args.anchor_data)) if args.anchor_data is not None else []
    check_outputs([Output(args.out, "refined checkpoint (--out)"), Output(report_path(args.out), "its report")],
                  [*case_files([resolve_case(args.case)]), ("--checkpoint", args.checkpoint),
                   ("--from-labels", args.from_labels), ("--targets", args.targets), *anchors])
    size = args.size
    state, config, metadata = load_checkpoint(args.checkpoint)
    case = load_case(args.case, force_geometry=args.force_geometry)
    check_fits_data(config, args.checkpoint, args.case, case.shape, case.images.shape[0])
    corrected, from_masks = None, args.masks
    if args.from_labels is not None:
        corrected, _ = read_label_volume(args.from_labels, force_geometry=args.force_geometry)
        if corrected.shape != case.shape:
            raise NeumoursError(f"{args.from_labels}: label shape {corrected.shape} does not match case "
                                f"{case.case_id} shape {case.shape}")
    else:
        cameras, targets, weights, from_masks = _load_targets(args.targets, case.shape, case.spacing)

    device = get_device(args.device)
    inr = INR(dataclasses.replace(config, precision=args.precision), device)
    inr.load_state_dict(state)
    vols = CaseVolumes.upload(device, [normalise(case.images)])
    settings = silhouette_settings(RenderSettings()) if from_masks else RenderSettings()
    if corrected is not None:
        cameras = orbit_cameras(case.shape, case.spacing, args.views, size)
        if from_masks:
            targets, weights = mask_targets(render_label_masks(device, corrected, case.spacing, cameras, settings))
        else:
            targets, weights = render_label_views(device, corrected, case.spacing, cameras, settings), None
    anchor = None
    if args.anchor_data is not None:
        others = [load_case(r, force_geometry=args.force_geometry) for r in list_cases(args.anchor_data)[:4]]
        anchor = Anchor.sample(inr, CaseVolumes.upload(device, [normalise(c.images) for c in others]),
                        weight=args.anchor_weight)

    truth = corrected if corrected is not None else case.label
    forward_s, cache = _timed_cache(inr, vols)
    _announce(args, device, forward_s, case, cameras, settings)
    before = region_scores(cache.labels(), truth, case.spacing) if truth is not None else None
    try:
        rows = refine(inr, vols, case.spacing, cameras, settings, targets, steps=args.steps, lr=args.lr,
                      anchor=anchor, weights=weights, path=args.path, progress=not args.quiet)
    except ValueError as exc:  # e.g. more ray samples than path (b)'s buffers hold
        raise NeumoursError(f"{args.case}: cannot refine ({exc})") from None
    after = region_scores(VolumeCache(inr, vols).labels(), truth, case.spacing) if truth is not None else None
    metadata = dict(metadata, refined_from=str(args.checkpoint), refined_on=case.case_id, refine_steps=str(args.steps))
    weights = checkpoint_bytes(inr.state_dict(), config, metadata, args.out)
    report = {"case": case.case_id, "views": len(cameras), "path": args.path,
              "targets": "masks" if from_masks else "images", "checkpoint": Path(args.out).name,
              "checkpoint_sha256": hashlib.sha256(weights).hexdigest(), "steps": rows, "dice_before": before,
              "dice_after": after}
    from neumours.atomic import atomic_write_files

    atomic_write_files({args.out: weights, report_path(args.out): (strict_json.dumps(report, indent=2)
                                                                   + "\n").encode("utf-8")})
    print(f"refined {args.checkpoint} on {case.case_id} from {len(cameras)} views in {args.steps} steps: "
          f"image loss {rows[0]['image_loss']:.4g} -> {rows[-1]['image_loss']:.4g}; wrote {args.out}")


def add_parsers(sub) -> None:
    p = add_command(sub, "refine", "correct a trained INR from rendered views of one case", DESCRIPTION, EPILOG,
                    usage="neumours refine CASE --checkpoint CKPT (--from-labels SEG | --targets DIR) --out CKPT2 "
                          "[options]", examples=EXAMPLES)
    p.add_argument("case", type=Path, help="the case to refine on (a case folder, any layout)")
    p.add_argument("--checkpoint", type=Path, required=True, help="INR checkpoint to start from (.safetensors)")
    p.add_argument("--targets", type=Path,
                   help="folder holding targets.npz (or the .npz file itself): cameras and images or masks")
    p.add_argument("--from-labels", type=Path, help="corrected label NIfTI, rendered from --views cameras")
    p.add_argument("--views", type=int_range(1, 360), default=4,
                   help="with --from-labels: orbiting cameras at equal azimuth steps")
    p.add_argument("--masks", action="store_true",
                   help="with --from-labels: tumour masks of the corrected labels as targets, not colour images")
    p.add_argument("--size", type=image_size, default="256x256",
                   help="with --from-labels: target image size, WIDTHxHEIGHT")
    p.add_argument("--steps", type=int_range(1, 1_000_000), default=20, help="AdamW steps")
    p.add_argument("--lr", type=finite_float(gt=0, max=1), default=1e-4, help="AdamW learning rate")
    p.add_argument("--path", choices=("cache", "direct"), default="cache",
                   help="gradient path: through the volume cache (a) or the INR at the ray samples (b)")
    p.add_argument("--anchor-data", type=Path,
                   help="folder of other cases whose predictions should stay as they are (first 4 used)")
    p.add_argument("--anchor-weight", type=finite_float(0, 1e6), default=1.0, help="weight of the anchor penalty")
    p.add_argument("--out", type=Path, required=True,
                   help="refined checkpoint to write (.safetensors); its .json report goes beside it")
    add_force_geometry_option(p)
    add_device_option(p)
    add_precision_option(p)
    add_quiet_option(p)
    p.set_defaults(func=refine_command)
