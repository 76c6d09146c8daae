"""The whole loop as one Ray job: record -> pretrain -> finetune -> evaluate -> report.

How to run
    Locally (starts a local Ray):
        python jobs/pipeline.py --config configs/quickstart.yaml
    On a running Ray cluster (a local `ray start --head`, KubeRay, ...):
        ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
            python jobs/pipeline.py --config configs/quickstart.yaml --set run.dir=s3://runs/breakout
    Ray 2.60 clusters use token authentication: run the client with RAY_AUTH_MODE=token.

Results to expect
    configs/quickstart.yaml on a 2-core laptop: about 13 minutes; `<run.dir>/report.md` shows the
    teacher (~58 points on Breakout), random (~1.4), the BC agent (~40-50, 0.7-0.9x the teacher)
    and the fine-tuned agent (about the BC level after its short online phase), with learning
    curves, the action confusion and a gameplay GIF.
    configs/smoke.yaml: about 2 minutes, tiny numbers; it checks the path, not the quality.
    Rerunning skips finished stages; a failed stage says which one and how to resume.
"""

import sys

from rayapp.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
