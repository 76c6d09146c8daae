"""RLlib DQN fine-tuning of the BC network (offline on the recordings, then online), as a Ray job.

How to run
    Locally, after `pretrain` in the same run folder:
        python jobs/finetune.py --config configs/quickstart.yaml
    On a Ray cluster, env runners on other nodes (game PCs join with
    `ray start --address=<head>:6379 --resources='{"game_pc": 1}'`; add
    --set 'finetune.env_runner_resources={game_pc: 1}' and set finetune.num_env_runners to their count;
    with finetune.use_gpu=true the learner is a remote actor on a GPU node, the driver needs none):
        ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
            python jobs/finetune.py --config configs/quickstart.yaml --set run.dir=s3://runs/bc \\
            --set finetune.num_env_runners=4 --set finetune.use_gpu=true

Results to expect
    `<run.dir>/finetune/curve.json` and `metrics.csv`: the greedy score starts at the BC level
    (the Q-network is the BC network) and moves from there; TensorBoard shows TD and margin losses,
    Q-values, env steps/s and learner updates/s. On 2 CPU cores about 60-70 env steps/s while
    learning (learner-bound: one 32-sample update per 4 env steps).
"""

import sys

from rayapp.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
