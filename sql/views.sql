-- Views over the instatag schema. `instatag db upgrade` drops and recreates them,
-- so edit them here and run the upgrade again. Portable SQL: PostgreSQL and SQLite.

DROP VIEW IF EXISTS predicted_tags;

-- The current champion model's predicted tags, one row per image and label.
CREATE VIEW predicted_tags AS
SELECT p.image_id,
       i.post,
       p.label,
       p.probability,
       p.rank,
       p.model_version_id AS model_version,
       p.scored_at
FROM predictions p
JOIN model_versions m ON m.id = p.model_version_id AND m.status = 'champion'
JOIN images i ON i.id = p.image_id;

DROP VIEW IF EXISTS uploader_labels;

-- The labels uploaders gave each image, in the newest vocabulary version.
CREATE VIEW uploader_labels AS
SELECT il.image_id,
       i.post,
       il.label,
       il.vocab_version_id AS vocab_version
FROM image_labels il
JOIN images i ON i.id = il.image_id
WHERE il.vocab_version_id = (SELECT max(id) FROM vocab_versions);
