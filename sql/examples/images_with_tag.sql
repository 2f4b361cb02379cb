-- Images whose predicted tag is the parameter tag, with at least probability min_probability.
-- instatag sql sql/examples/images_with_tag.sql -p tag=sweets_sum -p min_probability=0.5
SELECT image_id, post, probability, rank
FROM predicted_tags
WHERE label = :tag AND probability >= :min_probability
ORDER BY probability DESC, image_id
LIMIT 100;
