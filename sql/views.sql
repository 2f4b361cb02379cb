-- Views over the instatag schema. `instatag db upgrade` drops and recreates them,
-- so edit them here and run the upgrade again. Portable SQL: PostgreSQL and SQLite.

DROP VIEW IF EXISTS predicted_tags;

-- The current champion model's predicted tags, one row per post and label: an image posted more
-- than once (a re-post) has its tags under each post's name, so `WHERE post = '...'` finds any
-- post. Count images with count(DISTINCT image_id). rank 1 is the model's first tag (by
-- probability unless the model was trained with ranking dominant_first). Two posts of one image
-- with the same name (the same drop ingested from two folders) give one row.
CREATE VIEW predicted_tags AS
SELECT p.image_id,
       ps.post,
       p.label,
       p.probability,
       p.rank,
       p.model_version_id AS model_version,
       p.scored_at,
       ps.taken_at AS posted_at
FROM predictions p
JOIN model_versions m ON m.id = p.model_version_id AND m.status = 'champion'
JOIN posts ps ON ps.image_id = p.image_id
WHERE NOT EXISTS (SELECT 1 FROM posts same
                  WHERE same.image_id = ps.image_id AND same.post = ps.post AND same.id < ps.id);

DROP VIEW IF EXISTS uploader_labels;

-- The labels uploaders gave each image, in the newest vocabulary version (post: the image's
-- first post).
CREATE VIEW uploader_labels AS
SELECT il.image_id,
       i.post,
       il.label,
       il.vocab_version_id AS vocab_version
FROM image_labels il
JOIN images i ON i.id = il.image_id
WHERE il.vocab_version_id = (SELECT max(id) FROM vocab_versions);

DROP VIEW IF EXISTS label_verdicts;

-- The verdict that counts per image and label: the newest row of the append-only
-- label_corrections (confirmed | rejected), with who gave it, when, and the model version shown.
CREATE VIEW label_verdicts AS
SELECT c.image_id,
       c.label,
       c.verdict,
       c."user",
       c.created_at,
       c.model_version_id AS model_version
FROM label_corrections c
WHERE NOT EXISTS (SELECT 1 FROM label_corrections later
                  WHERE later.image_id = c.image_id AND later.label = c.label AND later.id > c.id);

DROP VIEW IF EXISTS drop_quality;

-- One row per drop (an ingest run that added posts) and model that graded it: the champion's
-- dominant_recall@2 and mAP on the labels the drop's new posts brought, beside its validation
-- figures and the popularity baseline, and the drift flags (docs/drops.md). A drop not graded
-- yet has one row with NULL figures.
CREATE VIEW drop_quality AS
SELECT r.id AS drop_id,
       r.started_at AS ingested_at,
       r.n_posts AS posts,
       r.n_images AS new_photos,
       e.n_labelled AS labelled,
       e.n_new_tags AS new_tags,
       e.model_version_id AS model_version,
       e.dominant_recall_2,
       e.valid_dominant_recall_2,
       e.baseline_dominant_recall_2,
       e.map,
       e.valid_map,
       e.flagged,
       e.reasons,
       e.graded_at
FROM ingest_runs r
LEFT JOIN drop_evaluations e ON e.ingest_run_id = r.id
WHERE r.n_posts > 0;
