-- Posts whose image is predicted with the parameter tag, with at least probability min_probability
-- (a re-posted image once per post name).
-- instatag sql sql/examples/images_with_tag.sql -p tag=sweets_sum -p min_probability=0.5
SELECT image_id, post, probability, rank
FROM predicted_tags
WHERE label = :tag AND probability >= :min_probability
ORDER BY probability DESC, image_id, post
LIMIT 100;
