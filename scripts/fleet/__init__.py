"""Fleet operations for the EC2 workers: status, wait, logs, redeploy, ssh-config.

Run `python -m scripts.fleet --help` from the repository root.
"""
