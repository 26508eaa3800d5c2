"""The models: one folder per base model and one for what they share.

    shared/    LoSh's own parts (the long-short pathway, eq. 1, 5, 6, the loss skeleton) and the parts both
               bases use (Video Swin, the text encoder, position encodings, box ops, small layers)
    losh_m/    LoSh-M: LoSh on MTTR (and the `mttr` baseline)
    losh_s/    LoSh-S: LoSh on SgMg (and the `sgmg` baseline)
    registry   config -> (model, criterion); the only module that imports both models
"""
