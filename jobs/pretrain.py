"""Behaviour cloning on Ray Train, streaming replays with Ray Data, as a Ray job.

How to run
    Locally:
        python jobs/pretrain.py --config configs/quickstart.yaml
    On a Ray cluster with GPUs (one worker per GPU, bfloat16 autocast, channels-last):
        ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
            python jobs/pretrain.py --config configs/quickstart.yaml \\
            --set data.uri=s3://replays/breakout --set run.dir=s3://runs/bc \\
            --set pretrain.use_gpu=true --set pretrain.num_workers=4

Results to expect
    On 60k Breakout teacher steps (configs/quickstart.yaml): ~0.93 validation accuracy after 10
    epochs, about 7 minutes on 2 CPU cores; the policy scores ~0.9x the teacher
    (benchmarks/RESULTS.md). Checkpoints every epoch in `<run.dir>/pretrain/`; a killed worker or
    job resumes from the latest.
"""

import sys

from rayapp.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
