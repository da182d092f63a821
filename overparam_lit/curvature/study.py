"""The Hessian probe study (escape dimensions: top, bottom and density of the spectrum during a
fit), declared for :mod:`overparam_lit.registry`."""

from overparam_lit.registry import Study, register

HESSIAN = register(Study(
    "hessian",
    callback="overparam_lit.callbacks.hessian.HessianProbe",
    options="overparam_lit.callbacks.hessian.HessianProbeOptions",
    artifacts={
        "hessian": "hessian/",
        "hessian_probe": "hessian/probe_step{:08d}.npz",        # one probe's numbers
        "hessian_density": "hessian/density_step{:08d}.png",    # its spectral density
    },
    fragment="hessian",
    reader="overparam_lit.studies.runs.hessian_rows",
    figures=("hessian", "spectra"),
))
