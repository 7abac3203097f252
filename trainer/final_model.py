"""The chief's last steps after training: choose the weights to keep (the best checkpoint, or the moving average
of the weights when it is better on the validation split), rebuild them as the float32 model that is served (at
--eval_input_size), evaluate it on the test split with --tta, write metrics.json, report.png and mistakes.png, and
export it and pass it through the promotion gate (trainer/promotion.py), which publishes it."""

import dataclasses

import keras
import tensorflow as tf

from trainer import config as config_lib
from trainer import data, evaluate, fine_tune, logger, model_dir, models, promotion
from trainer.plan import Outputs, Plan
from trainer.storage import join

log = logger.get()


def choose_weights(model, cfg, plan: Plan, outputs: Outputs, validation_data) -> dict:
    """Leaves in model the weights to evaluate and export: the best checkpoint (lowest validation loss) or, with
    --ema_momentum, the moving average of the weights when it is more accurate on the validation split (log loss
    breaks ties); the average is kept in checkpoints/ema.weights.h5. Returns what metrics.json records about it."""
    fine_tune.unfreeze_for_export(model)  # before get_weights: its order depends on the trainable flags
    if not cfg.ema_momentum or validation_data is None:
        if tf.io.gfile.exists(outputs.best_weights):
            model.load_weights(outputs.best_weights)
        return {"weights": "best_checkpoint"}
    average = model.get_weights()  # fit has written the moving average into the model
    # Saved from a float32 copy outside the strategy: saving under MultiWorkerMirroredStrategy is a collective.
    float32_copy(model, cfg, plan.image_size).save_weights(join(outputs.out_dir, model_dir.EMA_WEIGHTS))
    scores = {"ema": validation_score(model, validation_data, cfg.tta, plan.class_names)}
    if tf.io.gfile.exists(outputs.best_weights):
        model.load_weights(outputs.best_weights)
        scores["best_checkpoint"] = validation_score(model, validation_data, cfg.tta, plan.class_names)
    chosen = max(scores, key=lambda name: (scores[name]["accuracy"], -scores[name]["log_loss"]))
    if chosen == "ema":
        model.set_weights(average)
    log.info("validation accuracy " + ", ".join(f"{name} {score['accuracy']:.4f}" for name, score in scores.items())
             + f": keeping the {chosen} weights")
    return {"weights": chosen, "validation_by_weights": scores}


def validation_score(model, validation_data, tta: str, class_names) -> dict:
    labels, probabilities = evaluate.predict(model, validation_data, tta=tta)
    metrics = evaluate.compute_metrics(labels, probabilities, class_names)
    return {"accuracy": metrics["accuracy"], "log_loss": metrics["log_loss"]}


def check_eval_side(model, serving, cfg, plan: Plan, validation_data) -> dict:
    """With an --eval_input_size other than the training side: the chosen weights scored on the validation split at
    both sides (with --tta), and a warning when the side that is exported is the less accurate one (a model trained
    too briefly at its own side loses at a larger one). Returns what metrics.json records about it ({} otherwise)."""
    served_size, trained_size = cfg.eval_size(plan.image_size), list(plan.network_size)
    if validation_data is None or list(served_size) == trained_size:
        return {}
    at_training_side = validation_score(model, validation_data, cfg.tta, plan.class_names)
    batches = data.make_dataset(cfg.data_dir, "validation", training=False, image_size=plan.image_size,
                                batch_size=plan.global_batch)
    at_eval_side = validation_score(serving, batches, cfg.tta, plan.class_names)
    summary = (f"validation accuracy at the training side {trained_size[0]}: {at_training_side['accuracy']:.4f}, "
               f"at --eval_input_size {served_size[0]}: {at_eval_side['accuracy']:.4f}")
    if at_eval_side["accuracy"] < at_training_side["accuracy"]:
        log.warning(summary + f"; the export works at {served_size[0]}, the less accurate side: train longer at this "
                    "side, or leave --eval_input_size out")
    else:
        log.info(summary)
    return {"validation_by_side": {str(trained_size[0]): at_training_side, str(served_size[0]): at_eval_side}}


def evaluate_on_test(model, cfg, plan: Plan, metadata: dict, outputs: Outputs, monitor: str):
    """(metrics, labels, probabilities) of the model to export on the test split (validation when there is none),
    at --eval_input_size and with --tta, as the export serves it."""
    split = "test" if data.split_size(metadata, "test") else "validation"
    batches = data.make_dataset(cfg.data_dir, split, training=False, image_size=plan.image_size,
                                batch_size=plan.global_batch)
    labels, probabilities = evaluate.predict(model, batches, tta=cfg.tta)
    metrics = evaluate.compute_metrics(labels, probabilities, plan.class_names)
    history = evaluate.read_history(outputs.history)
    metrics.update({
        "split": split,
        "model": cfg.model,
        "epochs_completed": int(history[-1]["epoch"]) if history else 0,
        "best_" + monitor: min((row[monitor] for row in history if monitor in row), default=None),
        "eval_input_size": cfg.eval_size(plan.image_size),
        "tta": cfg.tta,
    })
    return metrics, labels, probabilities


def write_reports(cfg, plan: Plan, outputs: Outputs, metrics: dict, labels, probabilities) -> None:
    """metrics.json, report.png (curves, confusion matrix, ROC) and mistakes.png (the photos most wrong)."""
    evaluate.write_metrics(join(cfg.model_dir, model_dir.METRICS_FILE), metrics)
    height, width = plan.network_size
    evaluate.write_report(join(cfg.model_dir, model_dir.REPORT_FILE), evaluate.read_history(outputs.history),
                          metrics, labels, probabilities, title=f"{cfg.model} at {height}x{width}: {cfg.model_dir}")
    batches = data.make_dataset(cfg.data_dir, metrics["split"], training=False, image_size=plan.image_size,
                                batch_size=plan.global_batch)
    evaluate.write_mistakes(join(cfg.model_dir, model_dir.MISTAKES_FILE), batches, labels, probabilities,
                            plan.class_names, title=f"{metrics['split']} split: {cfg.model_dir}")


def float32_copy(model, cfg: config_lib.TrainConfig, image_size):
    """The trained model rebuilt in float32, outside any strategy, working at --eval_input_size: what gets
    evaluated on the test split, exported and served. Call fine_tune.unfreeze_for_export(model) first."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        side = cfg.eval_size(image_size)[0] if cfg.eval_input_size else cfg.input_size
        copy = models.build_model(dataclasses.replace(cfg, weights=None, input_size=side), image_size)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def export_and_promote(serving, cfg, plan: Plan, metadata: dict, metrics: dict) -> promotion.Outcome:
    """Exports the served model, then publishes it as `latest` only when the promotion gate blesses it; metrics.json
    records the decision (and the exit code a re-run of this finished run returns)."""
    outcome = promotion.promote(
        serving, export_root=cfg.export_dir or join(cfg.model_dir, model_dir.EXPORT_DIR), data_dir=cfg.data_dir,
        split=metrics["split"], image_size=plan.image_size, class_names=plan.class_names, model_name=cfg.model,
        metrics=metrics, training_data=data.lineage(metadata), tta=cfg.tta,
        gate=promotion.Gate(cfg.min_accuracy, cfg.min_roc_auc, cfg.max_regression, cfg.force_publish))
    evaluate.write_metrics(join(cfg.model_dir, model_dir.METRICS_FILE), {**metrics, "promotion": outcome.record})
    return outcome
