"""Progressive canary rollouts: steps, the judge and automatic rollback (rollout), and the
``canary`` commands (cli)."""
