"""A Ray Tune sweep over BC or DQN hyperparameters, as a Ray job.

How to run
    Locally:
        python jobs/sweep.py --config configs/sweep-bc.yaml
    On a Ray cluster (trials spread over its GPUs; fractional GPUs share one):
        ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
            python jobs/sweep.py --config configs/sweep-bc.yaml --set run.dir=s3://runs/sweep \\
            --set pretrain.use_gpu=true --set pretrain.gpus_per_worker=0.5 --set sweep.max_concurrent=4

Results to expect
    `<run.dir>/sweep/`: one folder per trial (named by trial id) with TensorBoard events; the best
    trial's overrides, metric and checkpoint printed and saved in `best.json` and
    `best_config.yaml`. ASHA stops weak trials after `sweep.grace_period` epochs. Rerunning
    the command resumes an interrupted sweep.
"""

import sys

from rayapp.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
