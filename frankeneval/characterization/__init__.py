"""Analysis 2, update characterization: energy and spectra of ΔIN = IN − Base and ΔRL = RL − IN on the unified
layer axis (``characterize``: streamed measurement, aggregation, cross-lineage compare; ``spectra``: the
per-matrix metrics)."""
