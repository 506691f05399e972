"""Files the library writes and reads back, one idea per module.

:mod:`lowrank.files.outputs`: may this path be replaced; :mod:`lowrank.files.atomic`: atomic writes and
the recovery of what a killed writer left; :mod:`lowrank.files.jsonable`: results as JSON;
:mod:`lowrank.files.cache`: the cache folder.
"""
