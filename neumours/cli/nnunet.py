"""``neumours export-nnunet``: a dataset as an nnU-Net v2 raw dataset, for the baseline comparison."""

from __future__ import annotations

from pathlib import Path

from neumours.cli.options import add_command, add_quiet_option, int_range, positive_int, seed


def cmd_export_nnunet(args) -> None:
    from neumours.data.nnunet_export import export_nnunet
    from neumours.outputs import check_output_folder

    check_output_folder(args.out, "nnU-Net raw output folder")
    folder = export_nnunet(args.data, args.out, args.dataset_id, name=args.name, regions=args.regions,
                           folds=args.folds, seed=args.seed, progress=not args.quiet)
    print(f"wrote {folder} (copy splits_final.json to nnUNet_preprocessed/{folder.name}/ after "
          f"nnUNetv2_plan_and_preprocess -d {args.dataset_id})")


def add_parsers(sub) -> None:
    p = add_command(
        sub, "export-nnunet", "write a dataset as an nnU-Net v2 raw dataset (the paper's baseline)",
        "Write OUT/Dataset<NNN>_<NAME>/ with imagesTr/<case>_0000..0003.nii.gz (t1n, t1c, t2w, t2f), "
        "labelsTr/<case>.nii.gz (0 background, 1 NCR, 2 ED, 3 ET), dataset.json and splits_final.json "
        "(fold 0 = the validation split INR training uses). OUT must be new or empty; nothing partial is "
        "left on failure. Set nnUNet_raw=OUT to train on it.",
        examples=("neumours export-nnunet data nnUNet_raw --dataset-id 501",))
    p.add_argument("data", type=Path, help="dataset folder (BraTS, MU-Glioma-Post or nnU-Net layout, or neumours synth)")
    p.add_argument("out", type=Path, help="new (or empty) folder to become nnUNet_raw")
    p.add_argument("--dataset-id", type=int_range(1, 999, allowed="an integer 1..999 (nnU-Net's three digits)"),
                   required=True, help="nnU-Net dataset id, 1..999")
    p.add_argument("--name", default="Neumours", help="dataset name after Dataset<NNN>_")
    p.add_argument("--regions", action="store_true",
                   help="region-based labels (whole tumor, tumor core, enhancing tumor), as nnU-Net's BraTS setup")
    p.add_argument("--folds", type=positive_int, default=1,
                   help="1: one fold, our training split (split_cases 10 %%); k > 1: kfold(cases, k, seed)")
    p.add_argument("--seed", type=seed, default=0, help="split seed (the same as neumours train --seed)")
    add_quiet_option(p)
    p.set_defaults(func=cmd_export_nnunet)
