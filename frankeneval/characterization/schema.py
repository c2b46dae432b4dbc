"""What a characterization run writes: file names, schema ids and the documentation of each record.

Output schema (``SCHEMA``): see :data:`RECORD_DOC` and :data:`SUMMARY_DOC`.
"""

SCHEMA = "frankeneval.characterize/1"
COMPARE_SCHEMA = "frankeneval.characterize.compare/1"
RUN_FILE = "run.json"
MATRICES_FILE = "matrices.jsonl"
SUMMARY_FILE = "summary.json"
COMPARE_RUN_FILE = "compare_run.json"
COMPARE_FILE = "compare.jsonl"
COMPARE_SUMMARY_FILE = "compare_summary.json"

# The fields every complete record holds (role fields + measurements); a line without one of them is not finished
# and is measured again on resume. One place, used by the writers (resume) and the readers (plots).
MATRIX_FIELDS = ("name", "shape", "matrix_shape", "numel", "section", "layer", "block", "component", "submodule",
                 "region", "norm_base", "norm_in", "norm_rl", "cos_in_rl", "delta_in", "delta_rl")
COMPARE_FIELDS = ("name", "shape", "matrix_shape", "numel", "section", "layer", "block", "component", "submodule",
                  "region", "delta_rl_fro", "pairs")


def _types():
    """The type of every field a reader uses (:func:`frankeneval.core.runstore.field_type_problem`): a record with
    a field of another type is not complete either (skipped with a warning: measured again on resume, left out of
    plots)."""
    from frankeneval.core.runstore import NUMBER, list_of_numbers

    none = type(None)
    role = {"name": str, "shape": list_of_numbers, "matrix_shape": list_of_numbers, "numel": int, "section": str,
            "layer": (int, none), "block": (int, none), "component": (str, none), "submodule": (str, none),
            "region": (str, none)}
    matrix = {**role, "norm_base": NUMBER, "norm_in": NUMBER, "norm_rl": NUMBER, "cos_in_rl": (*NUMBER, none),
              "delta_in": dict, "delta_rl": dict, "overlap_in_rl": (dict, none)}
    delta = {"fro": NUMBER, "sigma_top": list_of_numbers, "n_sigma": int,
             **{k: (*NUMBER, none) for k in ("rel_fro", "spectral_norm", "nuclear_norm", "stable_rank",
                                              "effective_rank", "condition_number", "log_spectral_volume",
                                              "sigma_min")}}
    overlap = {"left": (*NUMBER, none), "right": (*NUMBER, none)}
    compare = {**role, "delta_rl_fro": dict, "pairs": list}
    return matrix, delta, overlap, compare


def matrix_record_problem(record):
    """None for a complete matrices.jsonl record, else why it is not (see :data:`MATRIX_FIELDS`): a missing field,
    or a field of the wrong type (``delta_in`` / ``delta_rl`` / ``overlap_in_rl`` checked inside too)."""
    from frankeneval.core.results import require_fields
    from frankeneval.core.runstore import field_type_problem

    problem = require_fields(*MATRIX_FIELDS)(record)
    if problem:
        return problem
    matrix, delta, overlap, _ = _types()
    problem = field_type_problem(record, matrix)
    for part, types in (("delta_in", delta), ("delta_rl", delta), ("overlap_in_rl", overlap)):
        if problem is None and isinstance(record.get(part), dict):
            problem = field_type_problem(record[part], types)
            problem = problem and f"{part}: {problem}"
    if problem:
        return f"record of {record.get('name')!r} has a field of the wrong type ({problem})"
    if "fro" not in record["delta_in"] or "fro" not in record["delta_rl"]:
        return "incomplete record (no delta_in.fro or delta_rl.fro)"
    return None


def compare_record_problem(record):
    """None for a complete compare.jsonl record, else why it is not (see :data:`COMPARE_FIELDS`): a missing field or
    a field of the wrong type."""
    from frankeneval.core.results import require_fields
    from frankeneval.core.runstore import NUMBER, field_type_problem

    problem = require_fields(*COMPARE_FIELDS)(record)
    if problem:
        return problem
    problem = field_type_problem(record, _types()[3])
    if problem is None and not all(isinstance(v, NUMBER) and not isinstance(v, bool)
                                   for v in record["delta_rl_fro"].values()):
        problem = "delta_rl_fro holds a value that is not a number"
    if problem is None and not all(isinstance(p, dict) for p in record["pairs"]):
        problem = "pairs holds an entry that is not an object"
    return problem and f"record of {record.get('name')!r} has a field of the wrong type ({problem})"

RECORD_DOC = """One line of matrices.jsonl (one analysed weight matrix):
  name, shape (stored), matrix_shape [out, rest], numel, section, layer (unified index or null), block,
  component, submodule, region (early/middle/late for LLM tensors, else null), over_reference_limit,
  norm_base, norm_in, norm_rl (‖W‖_F), cos_in_rl (cosine of ΔIN and ΔRL, null if either is zero),
  delta_in / delta_rl: {fro: ‖Δ‖_F, rel_fro: ‖Δ‖_F / ‖W_IN‖_F, and with spectra: spectral_norm σ₁,
    nuclear_norm Σσ, stable_rank ‖Δ‖_F²/σ₁² (null for Δ = 0), effective_rank exp(-Σ p log p), p = σ/Σσ
    over σ > 1e-12 (null for Δ = 0), condition_number σ₁/(σ_min + 1e-12), log_spectral_volume
    Σ_{i≤volume_k} log(σᵢ + 1e-12), sigma_min, n_sigma, sigma_top (top_k σ, descending)},
  overlap_in_rl (with spectra and rank_r > 0; null if either Δ = 0): {r, left, right (mean cos² of the
    principal angles between the top-r left / right singular subspaces of ΔIN and ΔRL), left_cosines,
    right_cosines, chance_left = r/out, chance_right = r/rest},
  svd_method, seconds, seed_compatible (true: measured with the reference scripts' arithmetic, see
  characterization.reference), spectra_skipped (seed-compatible only: why the reference has no spectra for it --
  more than 1e8 elements, or a 1-D weight such as visual.merger.ln_q.weight, which then has energy fields only)."""

SUMMARY_DOC = """summary.json:
  schema, seed_compatible (true: the reference scripts' definitions, false: the paper's / docs/method.md's),
  run (= run.json: versions, models with fingerprints, settings, device), complete (every planned
  matrix measured), n_matrices, n_planned, seconds (compute wall time of the runs so far, last run),
  notes, off_axis (names of measured matrices with no unified layer: embeddings, lm_head),
  over_reference_limit (names with > 1e8 elements, which the reference skips; their spectra are measured
  unless seed-compatible), skipped_by_reference_rule (seed-compatible: those whose spectra were skipped),
  spectra_skipped ({name: reason} for every record without spectra under seed_compatible),
  aggregates: {by_layer (keys: unified index as a string), by_section, by_component,
    by_section_component ("llm/attention"), by_region, all}: each group is
    {n, energy: {delta_in_fro, delta_rl_fro (sqrt of Σ‖Δ‖_F²), delta_in_rel_fro, delta_rl_rel_fro
      (sqrt(Σ‖Δ‖²)/sqrt(Σ‖W_IN‖²))}, delta_in / delta_rl: {metric: {mean, sum, n}} for fro, rel_fro and the
     spectral metrics, cos_in_rl: {mean, sum, n}, overlap_left / overlap_right: {mean, sum, n}},
  diversity (null without spectra; the reference's characterisation_diversity.py view): {source, volume_k,
    per_layer_rule, representative_rule, by_layer (keys: unified index as a string): {n (matrices with spectra),
      delta_in / delta_rl: {spectral_norm, log_spectral_volume} (means over the layer's matrices)},
    region_spectra: {early, middle, late: null or {name, layer, index, n_candidates, delta_in, delta_rl (top-k σ,
      descending)}}: the representative matrix of each LLM third, the one at index n_candidates // 2 after sorting
    the third's matrices by layer (ties in module order)}.
  The selection is in run.settings: sections, weight_filter (substring of the weight's name, null: all),
  llm_only (true: LLM decoder layers only), seed_compatible."""

