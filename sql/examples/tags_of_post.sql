-- The predicted tags of one post by its name (a re-post's own name too), rank 1 first.
-- instatag sql sql/examples/tags_of_post.sql -p post=2026-11-01_06-01-38_UTC
SELECT post, image_id, rank, label, probability
FROM predicted_tags
WHERE post = :post
ORDER BY image_id, rank;
