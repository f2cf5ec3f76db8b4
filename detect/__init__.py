"""Faces and tags: `detect.faces` finds and crops anime faces, `detect.tags` tags the crops."""
