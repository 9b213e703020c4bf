"""The `person` setting: the automatic prompt never guesses a sex face analysis could not tell."""

from comfyui_model_swap.nodes.pipeline import prompting


def test_unknown_sex_gives_a_neutral_person_and_the_setting_overrides_analysis():
    prompts, people = prompting.prompts_for([1, 2, 3, 4])  # e.g. OpenCV YuNet/SFace: no age/sex model
    assert all(p.sex == "person" for p in people)
    assert all(" person " in text and " woman " not in text and " man " not in text for text in prompts)
    women, _ = prompting.prompts_for([1, 2], person="woman")
    men, _ = prompting.prompts_for([1, 2], sex="female", person="man")  # the setting wins over analysis
    assert all(" woman " in t for t in women) and all(" man " in t for t in men)
    analysed, _ = prompting.prompts_for([1, 2], sex="male", person="auto")
    assert all(" man " in t for t in analysed)
    assert prompting.prompts_for([5], user_prompt="a tall model", person="woman")[0] == ["a tall model"]


def test_a_known_sex_draws_the_same_person_as_before_the_setting():
    """The seed's draw order is unchanged, so existing seeds keep their people."""
    female = prompting.random_identity(11, sex="female")
    neutral = prompting.random_identity(11)
    assert (female.skin_tone, female.ethnicity, female.hair_colour, female.age_band) == \
           (neutral.skin_tone, neutral.ethnicity, neutral.hair_colour, neutral.age_band)
