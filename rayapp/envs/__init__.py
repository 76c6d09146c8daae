"""Game environments: ALE Atari games, scripted teachers and recording policies."""

from rayapp.envs.atari import action_controls, env_id, make_atari_env
from rayapp.envs.policies import NoisyPolicy, Policy, RandomPolicy, TeacherPolicy, make_policy
from rayapp.envs.teachers import TEACHERS, BreakoutTeacher, PongTeacher, Teacher, make_teacher

__all__ = [
    "TEACHERS",
    "BreakoutTeacher",
    "NoisyPolicy",
    "Policy",
    "PongTeacher",
    "RandomPolicy",
    "Teacher",
    "TeacherPolicy",
    "action_controls",
    "env_id",
    "make_atari_env",
    "make_policy",
    "make_teacher",
]
