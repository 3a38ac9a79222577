"""Pipelines: the long jobs behind the ``jaxue`` command.

Each module exposes a frozen ``Config`` dataclass (its fields are the
command's flags, `jaxue.pipelines.options`) and ``run(config, workdir, *,
overwrite=False) -> dict``, which owns a run directory (`jaxue.runs`):
rerunning the same config resumes, another config is refused.

* `craft`: craft protective noise and release the protected dataset.
* `evaluate`: train victims on a release (defences, adversarial training).
* `certify`: certified (q, eta)-learnability of saved models.
* `recover`: the weight-recovery attack on a saved model.
* `table`: methods x defences, each cell crafted and evaluated.
* `quickstart`: craft, release, train victims, certify, write a report.
"""
