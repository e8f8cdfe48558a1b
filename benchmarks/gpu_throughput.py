"""The model stage and the whole build on a GPU, float32 against mixed precision, in one run.

    .venv/bin/python -m benchmarks.gpu_throughput [--images 2000] [--batch-size 128]

Prints the device, the bare Keras model's images/s on pre-decoded batches in float32 and in
mixed precision (with their embedding agreement, min cosine), and end-to-end
``catalog-index build`` images/s with each. Runs on a CPU too (slowly), which is how it was
checked here: no GPU was lent to the sessions that wrote it.
"""

from __future__ import annotations

import argparse
import subprocess
import time

import numpy as np

from benchmarks.build_throughput import add_catalog_arguments, catalog_paths, measure_build


def device_name() -> str:
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return "no GPU: CPU only"
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return "GPU (nvidia-smi not found)"


def model_rate(paths, precision: str, batch_size: int, repeats: int = 5):
    from models.loader import load_model
    from models.preprocessing import preprocess_image

    model = load_model(runtime="keras", precision=precision)
    pixels = np.stack([preprocess_image(open(p, "rb").read(), model.info.preprocessing).pixels
                       for p in paths[:512]])
    batches = [pixels[i:i + batch_size] for i in range(0, len(pixels), batch_size)]
    model.predict(batches[0])
    started = time.perf_counter()
    for _ in range(repeats):
        for batch in batches:
            model.predict(batch)
    rate = repeats * len(pixels) / (time.perf_counter() - started)
    return rate, model.predict(pixels[:64]).embeddings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_catalog_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)

    paths = catalog_paths(args)
    print(f"device: {device_name()}; {len(paths)} JPEGs of {args.size}x{args.size}")
    float32_rate, float32_vectors = model_rate(paths, "float32", args.batch_size)
    mixed_rate, mixed_vectors = model_rate(paths, "mixed", args.batch_size)
    agreement = float(np.sum(float32_vectors * mixed_vectors, axis=1).min())
    print(f"model, float32, batch {args.batch_size}: {float32_rate:8.1f} images/s")
    print(f"model, mixed,   batch {args.batch_size}: {mixed_rate:8.1f} images/s "
          f"(x{mixed_rate / float32_rate:.2f}; min cosine to float32 {agreement:.5f})")
    for precision in ("float32", "mixed"):
        seconds = measure_build(paths, ["--runtime", "keras", "--precision", precision,
                                        "--batch-size", str(args.batch_size)])
        print(f"build, {precision:7s}: {len(paths) / seconds:8.1f} images/s ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
