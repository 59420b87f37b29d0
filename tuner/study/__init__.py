"""Study files: YAML -> validated StudySpec (loader), its dataclasses (spec), the search space (space), presets."""
