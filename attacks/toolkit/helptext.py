"""Help texts of the parameters several attacks share, so that ``shebench show`` explains one knob
(the rank cut, the span thresholds, label completion) in the same words for every attack."""

RANK_TOL = ("relative singular-value cut of the rank estimate: singular values below rank_tol x the "
            "largest count as zero; in (0, 1]")
TAU1 = ("layer-0 span threshold: a vocabulary token counts as present when its first-layer input's "
        "relative distance to the observed update's row space is below tau1; in (0, 1]")
TAU2 = ("layer-1 span threshold: a prefix is extended by a token when the extended prefix's "
        "second-layer input lies within relative distance tau2 of the layer-1 span; in (0, 1]")
TOKENS_PER_EXAMPLE = ("tokens assumed per private example when the span saturates (more distinct tokens "
                      "than its rank): the bag then holds batch_size x this many nearest tokens; >= 1")
COMPLETE_LABEL = ("decoder classification: append the label token the update implies to each "
                  "reconstructed prompt; true or false")
MAX_LEN = "most tokens a decoded sequence may grow to; >= 1"
NOISE_MODE = ("noise-tolerant token bag: tokens whose layer-0 distances stand out from the vocabulary's "
              "(robust z-scores of the log-odds) instead of those under the threshold; auto: when the "
              "span's estimated noise edge is above float rounding; on, off (strict: always off)")
NULL_Z = ("noise-tolerant mode: a token joins the bag when its robust z-score against the vocabulary is "
          "below -null_z (the vocabulary's non-members reach about -4); > 0")
