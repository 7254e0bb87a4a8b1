"""The classic Keras ResNet50 flower tutorial, step by step, as a timing and accuracy reference.

Deliberately unoptimised and faithful to the tutorial: image_dataset_from_directory
80/20 with seed 123, a frozen keras.applications backbone fed raw 0..255 pixels
(the tutorial's own preprocessing), Flatten → Dense(512, relu) → Dense(n, softmax),
Adam 1e-3, fit for 5 epochs with validation every epoch.

    python benchmarks/reference/tutorial_reference.py --data DIR [--backbone resnet50|mobilenet_v2]
        [--weights none|imagenet|PATH] [--image-size 180] [--epochs 5] [--json OUT] [--split-csv OUT]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf

BACKBONES = {"resnet50": tf.keras.applications.ResNet50, "mobilenet_v2": tf.keras.applications.MobileNetV2}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--backbone", default="resnet50", choices=sorted(BACKBONES))
    ap.add_argument("--weights", default="none")
    ap.add_argument("--image-size", type=int, default=180)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--split-csv", help="write the split it used, in floranet's split.csv format")
    args = ap.parse_args()
    t0 = time.perf_counter()
    size = (args.image_size, args.image_size)

    # Steps 1-2: the 80/20 split with seed 123.
    train_ds = tf.keras.utils.image_dataset_from_directory(
        args.data, validation_split=0.2, subset="training", seed=123, image_size=size, batch_size=args.batch_size
    )
    val_ds = tf.keras.utils.image_dataset_from_directory(
        args.data, validation_split=0.2, subset="validation", seed=123, image_size=size, batch_size=args.batch_size
    )
    class_names = train_ds.class_names
    if args.split_csv:
        write_split(args.data, train_ds.file_paths, val_ds.file_paths, args.split_csv)

    # Step 3: pretrained base, top removed, average pooling, frozen; the tutorial's head.
    weights = None if args.weights == "none" else args.weights
    base = BACKBONES[args.backbone](include_top=False, input_shape=(*size, 3), pooling="avg", weights=weights)
    for layer in base.layers:
        layer.trainable = False
    model = tf.keras.Sequential(
        [
            base,
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(512, activation="relu"),
            tf.keras.layers.Dense(len(class_names), activation="softmax"),
        ]
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    # Step 4: train, validating every epoch.
    t_fit = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, verbose=2)
    fit_s = time.perf_counter() - t_fit
    result = {
        "backbone": args.backbone,
        "weights": args.weights,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "val_accuracy": float(history.history["val_accuracy"][-1]),
        "fit_seconds": round(fit_s, 2),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def write_split(root: str, train: list[str], val: list[str], out: str) -> None:
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "sha256"])
        for subset, paths in (("train", train), ("validation", val)):
            for p in paths:
                rel = os.path.relpath(p, root).replace(os.sep, "/")
                with open(p, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
                w.writerow([rel, rel.split("/")[0], subset, digest])


if __name__ == "__main__":
    main()
