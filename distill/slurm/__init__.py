"""Run a recipe on a Slurm cluster: cluster profiles, sbatch scripts rendered from templates,
submission as a chain of dependent jobs, and the state of each stage's job."""
