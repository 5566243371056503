# What every mmfca config adds to its codebase's runtime. List this file in
# `_base_` next to the codebase's bases, then set in the config
#
#     custom_imports = dict(imports=['mmfca'], allow_failed_imports=False)
#     default_hooks = _base_.mmfca_hooks
#
# (the codebases' own bases set both keys, and mmengine refuses a key that
# two bases set, so the config itself merges these over theirs).

# mmengine's Runner plus what it lacks: CPU distributed training over gloo,
# --resume that skips a damaged latest checkpoint, and checkpoint loading
# that refuses files holding arbitrary Python objects unless trusted
# (--trust-checkpoint). The codebases' own tools/train.py and tools/test.py
# build it as well.
runner_type = 'ReliableRunner'

# The training data as one seeded stream of samples (ReliableRunner logs
# what it changes): every sample is augmented with the Python, numpy and
# torch generators seeded from (randomness.seed, its position in the
# stream), not from a worker's history; InfiniteSampler and DefaultSampler
# become their seeded versions (same indices, same order), and
# IterBasedTrainLoop becomes ResumableIterBasedTrainLoop, which resumes by
# starting the sampler at the saved position instead of loading every batch
# already trained on again. With RNGStateHook, a resumed run then ends as
# the uninterrupted one whatever num_workers and persistent_workers are.
# False: mmengine's loop and samplers.
seeded_data_stream = True

# Merged by name into the codebase's default_hooks (a config that sets
# custom_hooks keeps them):
# - checkpoint: written to a temporary file and renamed, so a kill while
#   saving leaves the previous checkpoint as the latest;
# - rng_state: the random generator states saved in every checkpoint and
#   restored on resume (a resumed run ends as the uninterrupted one);
# - non_finite_loss: training stops at the first NaN/inf loss, before a
#   checkpoint of broken weights is written;
# - label_range: training stops at a label beyond the heads' num_classes,
#   naming the file.
mmfca_hooks = dict(
    checkpoint=dict(type='SafeCheckpointHook'),
    rng_state=dict(type='RNGStateHook'),
    non_finite_loss=dict(type='NonFiniteLossHook'),
    label_range=dict(type='LabelRangeHook'))
