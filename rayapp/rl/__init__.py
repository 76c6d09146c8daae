"""RLlib: DQN fine-tuning of the BC network (DQfD), its env, module, learner and offline data."""

__all__ = ["algorithm", "dqn_config", "env", "finetune", "learner", "module", "offline"]
