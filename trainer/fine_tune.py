"""Fine-tuning a pretrained keras.applications backbone: the new head alone for --freeze_backbone_epochs, then the
whole network (the learning rate of each phase is `schedules.FineTuneSchedule`). A pretrained backbone's
BatchNormalization layers stay in inference mode throughout, keeping the ImageNet statistics."""

import keras

from trainer import config as config_lib
from trainer import logger, models

log = logger.get()


class FreezeBackbone(keras.callbacks.Callback):
    """The fine-tuning schedule's switch: the backbone frozen for the first `epochs` epochs, trainable after (its
    BatchNormalization layers stay frozen when pretrained). Also right after a resume, whatever epoch it starts at.
    The optimizer was built over every variable fine-tuning trains, so it needs no rebuilding; the train step is
    retraced, since Keras collects the trainable variables when it traces."""

    def __init__(self, backbone, epochs: int, freeze_batch_norm: bool):
        super().__init__()
        self.backbone, self.epochs, self.freeze_batch_norm = backbone, epochs, freeze_batch_norm
        self.trainable = False  # how prepare_fine_tuning leaves the backbone before fit

    def on_epoch_begin(self, epoch, logs=None):
        trainable = epoch >= self.epochs
        if trainable != self.trainable:
            models.set_backbone_trainable(self.backbone, trainable, self.freeze_batch_norm)
            self.model.make_train_function(force=True)
            self.trainable = trainable
            log.info(f"epoch {epoch + 1}: backbone {'trainable' if trainable else 'frozen'}")


def prepare_fine_tuning(model, cfg: config_lib.TrainConfig, head_epochs: int) -> FreezeBackbone | None:
    """For a keras.applications model (after compile): builds the optimizer over every variable fine-tuning will
    train, so unfreezing later needs no new optimizer state; freezes the pretrained backbone's BatchNormalization
    layers; freezes the backbone for the head-only epochs and returns the callback that unfreezes it. None when
    there is nothing to switch (no backbone, or no head-only epochs)."""
    backbone = models.find_backbone(model)
    if backbone is None:
        return None
    pretrained = bool(cfg.weights)
    models.set_backbone_trainable(backbone, True, freeze_batch_norm=pretrained)
    model.optimizer.build(model.trainable_variables)
    if not head_epochs:
        return None
    models.set_backbone_trainable(backbone, False, freeze_batch_norm=pretrained)
    return FreezeBackbone(backbone, head_epochs, freeze_batch_norm=pretrained)


def unfreeze_for_export(model) -> None:
    """get_weights() lists trainable variables first: a model copied for export (built with everything trainable)
    only matches when the backbone's flags are set the same way."""
    backbone = models.find_backbone(model)
    if backbone is not None:
        models.set_backbone_trainable(backbone, True, freeze_batch_norm=False)
