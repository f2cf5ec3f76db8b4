"""Tags of face crops: the WD tagger (timm), the tag stage and tagger training."""
